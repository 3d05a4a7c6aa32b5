package app

import (
	"time"

	"github.com/kuracache/kura/httpapi"
)

// statusView feeds the status page from the node's parts. Every answer comes from memory
// (gossip state, outbox counters, the store's totals, the last memory sample), so the page
// never waits on a peer or on the disk.
type statusView struct {
	a       *App
	started time.Time
}

func (v statusView) Status() httpapi.NodeStatus {
	a := v.a
	health := a.cluster.Health()
	self := a.cluster.Self()
	members := a.cluster.Members()
	out := httpapi.NodeStatus{
		Version: Version,
		Started: v.started,
		Members: make([]httpapi.MemberStatus, 0, len(members)),
	}
	for _, m := range members {
		ms := httpapi.MemberStatus{Name: m.Name, Region: m.Region, URL: m.URL, Self: m.Name == self.Name, Health: health[m.Name]}
		if ms.Self {
			// memberlist always reports itself alive; what matters about this node is its
			// traffic state, shown in the header.
			ms.Health = "alive"
		} else {
			ms.OutboxDepth = a.outbox.Depth(m.Name)
		}
		if ms.Health == "" {
			ms.Health = "unknown"
		}
		out.Members = append(out.Members, ms)
	}
	disk := a.store.DiskStats()
	out.Disk = httpapi.DiskStatus{
		SegmentBytes: disk.SegmentBytes, BudgetBytes: disk.BudgetBytes,
		EvictedRecords: disk.EvictedRecords, EvictedSegments: disk.EvictedSegments,
	}
	out.Memory = httpapi.MemoryStatus{
		State:          a.memory.State().String(),
		UsageBytes:     a.memory.Usage(),
		SoftLimitBytes: a.cfg.MemorySoftLimitBytes,
		HardLimitBytes: a.cfg.MemoryHardLimitBytes,
	}
	return out
}
