package httpapi

import (
	"net/http"
	"slices"

	"github.com/labstack/echo/v4"
)

// upResponse is GET /up. Field names are the original Kura's, which dashboards and the e2e
// suites read.
type upResponse struct {
	Status   string `json:"status"`
	TenantID string `json:"tenant_id"`
	Region   string `json:"region"`
	Node     string `json:"node"`
	NodeURL  string `json:"node_url"`
	// ConnectedNodes are the other live members' URLs, sorted.
	ConnectedNodes []string `json:"connected_nodes"`
	// RingMembers is the number of live members including this node: a count, as in the
	// original, whose operators wait for "ring_members":N.
	RingMembers int `json:"ring_members"`
	// RingMemberNames are their names, sorted. [beyond]
	RingMemberNames []string `json:"ring_member_names"`
	// Members are the distinct regions of live members including this node's, sorted.
	Members []string `json:"members"`
	// Nodes are the live members' URLs including this node's, sorted.
	Nodes []string `json:"nodes"`
	// State is joining, serving or draining. [beyond]
	State string `json:"state"`
}

func (s *Server) upStatus() upResponse {
	self := Member{Name: s.cfg.NodeName, Region: s.cfg.Region, URL: s.cfg.NodeURL}
	var members []Member
	if s.members != nil {
		members = s.members.Members()
	}
	resp := upResponse{
		Status:         "ok",
		TenantID:       s.cfg.TenantID,
		Region:         s.cfg.Region,
		Node:           s.cfg.NodeName,
		NodeURL:        s.cfg.NodeURL,
		ConnectedNodes: []string{},
		State:          s.state().String(),
	}
	names := []string{self.Name}
	regions := []string{self.Region}
	nodes := []string{self.URL}
	for _, m := range members {
		if m.Name == self.Name {
			continue // this node, whatever the membership layer thinks its URL is
		}
		names = append(names, m.Name)
		regions = append(regions, m.Region)
		nodes = append(nodes, m.URL)
		if m.URL != "" && m.URL != self.URL {
			resp.ConnectedNodes = append(resp.ConnectedNodes, m.URL)
		}
	}
	resp.RingMemberNames = sortedUnique(names)
	resp.RingMembers = len(resp.RingMemberNames)
	resp.Members = sortedUnique(regions)
	resp.Nodes = sortedUnique(nodes)
	resp.ConnectedNodes = sortedUnique(resp.ConnectedNodes)
	return resp
}

// sortedUnique sorts and deduplicates, dropping empty strings; it never returns nil so the
// JSON always carries an array.
func sortedUnique(v []string) []string {
	out := make([]string, 0, len(v))
	for _, s := range v {
		if s != "" {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *Server) handleUp(c echo.Context) error {
	return c.JSON(http.StatusOK, s.upStatus())
}
