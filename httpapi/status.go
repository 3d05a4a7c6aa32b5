package httpapi

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/internal/telemetry"
)

// StatusSource is what the status page shows beyond what the HTTP API knows itself: the
// cluster, the disk budget and the memory watermarks. Implementations are safe for concurrent
// use and answer from memory (the page never waits on peers).
type StatusSource interface {
	Status() NodeStatus
}

// NodeStatus is one snapshot for the status page.
type NodeStatus struct {
	Version string
	Started time.Time
	Members []MemberStatus // every member memberlist knows, this node included
	Disk    DiskStatus
	Memory  MemoryStatus
}

// MemberStatus is one member as this node sees it.
type MemberStatus struct {
	Name, Region, URL string
	Self              bool
	Health            string // alive, suspect, …
	OutboxDepth       int64  // entries this node still has to push to it
}

// DiskStatus is the disk budget's use.
type DiskStatus struct {
	SegmentBytes, BudgetBytes       int64
	EvictedRecords, EvictedSegments uint64
}

// MemoryStatus is the memory watermark state.
type MemoryStatus struct {
	State                                      string // normal, soft, hard
	UsageBytes, SoftLimitBytes, HardLimitBytes int64
}

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes":   formatBytes,
	"percent": percent,
	// ratio is a window's hit ratio, or a dash without lookups in it.
	"ratio": func(l telemetry.Lookups) template.HTML {
		if l.Total() == 0 {
			return `<span class="muted">–</span>`
		}
		return template.HTML(percent(l.Ratio()))
	},
	"ago": func(t time.Time) string { return time.Since(t).Round(time.Second).String() },
	// barWidth is a CSS width for a fraction, clamped so an over-budget disk fills the bar.
	"barWidth": func(f float64) template.CSS {
		return template.CSS(fmt.Sprintf("%.1f%%", 100*min(max(f, 0), 1)))
	},
}).Parse(statusHTML))

// statusPage is the template's data.
type statusPage struct {
	Node        upResponse
	Status      NodeStatus
	HasStatus   bool
	Regions     []regionRow
	Protocols   []protocolRow
	DiskPercent float64
	EvictRate   float64 // records a minute since the node started
	Generated   time.Time
}

type regionRow struct {
	Region  string
	Members []MemberStatus
}

type protocolRow struct {
	Protocol string
	telemetry.RecentLookups
}

// handleStatus serves GET /: a self-contained HTML page (no external assets, no JavaScript)
// that refreshes itself every 10 seconds.
func (s *Server) handleStatus(c echo.Context) error {
	p := statusPage{Node: s.upStatus(), Generated: time.Now()}
	if s.status != nil {
		p.Status, p.HasStatus = s.status.Status(), true
		byRegion := map[string][]MemberStatus{}
		for _, m := range p.Status.Members {
			byRegion[m.Region] = append(byRegion[m.Region], m)
		}
		for region, ms := range byRegion {
			slices.SortFunc(ms, func(a, b MemberStatus) int { return strings.Compare(a.Name, b.Name) })
			p.Regions = append(p.Regions, regionRow{Region: region, Members: ms})
		}
		slices.SortFunc(p.Regions, func(a, b regionRow) int { return strings.Compare(a.Region, b.Region) })
		if b := p.Status.Disk.BudgetBytes; b > 0 {
			p.DiskPercent = float64(p.Status.Disk.SegmentBytes) / float64(b)
		}
		if up := time.Since(p.Status.Started).Minutes(); up > 0 {
			p.EvictRate = float64(p.Status.Disk.EvictedRecords) / up
		}
	}
	for protocol, r := range s.metrics.lookups.Recent() {
		p.Protocols = append(p.Protocols, protocolRow{Protocol: protocol, RecentLookups: r})
	}
	slices.SortFunc(p.Protocols, func(a, b protocolRow) int { return strings.Compare(a.Protocol, b.Protocol) })
	var buf bytes.Buffer
	if err := statusTemplate.Execute(&buf, p); err != nil {
		return &apiError{status: http.StatusInternalServerError, message: "Status page failed", cause: err}
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.HTMLBlob(http.StatusOK, buf.Bytes())
}

func percent(f float64) string { return fmt.Sprintf("%.1f %%", 100*f) }

// formatBytes renders a byte count in binary units.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
