package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/hashicorp/memberlist"
)

// metaVersion is the format version of the metadata this build writes. Decoders accept any
// version >= 1 and read the fields they know, so a later version may add fields but must
// keep these with their meaning (a breaking change needs new field names), which keeps
// rolling upgrades of a mixed-version cluster working.
const metaVersion = 1

// wireMeta is the JSON each member gossips about itself. Keys are short because the whole
// document must fit memberlist's MetaMaxSize (512 bytes).
type wireMeta struct {
	V        int    `json:"v"`
	Name     string `json:"name"`
	Region   string `json:"region"`
	Tenant   string `json:"tenant"`
	URL      string `json:"url,omitempty"`
	Internal string `json:"internal"`
}

// errAdmission prefixes every admission refusal so the memberlist log adapter can recognise
// memberlist's own (unthrottled) report of it and leave the telling to our rate-limited log.
const errAdmission = "kura admission"

// rejection is why a node is not admitted; reason is the metric label.
type rejection struct {
	reason string // "metadata" or "tenant"
	err    error
}

func (r *rejection) Error() string { return errAdmission + ": " + r.err.Error() }

func validateSelf(m Member) error {
	switch {
	case m.Name == "":
		return errors.New("node name is empty")
	case m.Tenant == "":
		return errors.New("tenant is empty")
	case m.Region == "":
		return errors.New("region is empty")
	}
	if err := checkHostPort(m.InternalAddr); err != nil {
		return fmt.Errorf("internal address %q: %w", m.InternalAddr, err)
	}
	return nil
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not in 1-65535", port)
	}
	return nil
}

// encodeMeta renders m's metadata, failing when it would not fit memberlist's limit.
func encodeMeta(m Member) ([]byte, error) {
	b, err := json.Marshal(wireMeta{
		V: metaVersion, Name: m.Name, Region: m.Region, Tenant: m.Tenant, URL: m.URL, Internal: m.InternalAddr,
	})
	if err != nil {
		return nil, fmt.Errorf("encode member metadata: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("member metadata is %d bytes, over memberlist's %d-byte limit (shorten the node name, URL or region)",
			len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

// decodeMeta parses and validates the metadata gossiped by the node called name. It is the
// decoder of untrusted input on the gossip path: size-capped, strict about required fields.
func decodeMeta(name string, b []byte) (Member, error) {
	if len(b) == 0 {
		return Member{}, errors.New("no metadata (not a Kura node?)")
	}
	if len(b) > memberlist.MetaMaxSize {
		return Member{}, fmt.Errorf("metadata is %d bytes, over the %d-byte limit", len(b), memberlist.MetaMaxSize)
	}
	var w wireMeta
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&w); err != nil {
		return Member{}, fmt.Errorf("undecodable metadata: %w", err)
	}
	if dec.More() {
		return Member{}, errors.New("undecodable metadata: trailing data")
	}
	switch {
	case w.V < 1:
		return Member{}, fmt.Errorf("metadata format version %d is not supported", w.V)
	case w.Name != name:
		return Member{}, fmt.Errorf("metadata names node %q", w.Name)
	case w.Tenant == "":
		return Member{}, errors.New("metadata has no tenant")
	case w.Region == "":
		return Member{}, errors.New("metadata has no region")
	}
	if err := checkHostPort(w.Internal); err != nil {
		return Member{}, fmt.Errorf("metadata internal address %q: %w", w.Internal, err)
	}
	return Member{Name: w.Name, Region: w.Region, Tenant: w.Tenant, URL: w.URL, InternalAddr: w.Internal}, nil
}

// admission implements memberlist's AliveDelegate and MergeDelegate for the Cluster.
type admission Cluster

var (
	_ memberlist.AliveDelegate = (*admission)(nil)
	_ memberlist.MergeDelegate = (*admission)(nil)
)

// admit decides whether node may be a member: Kura metadata of our own tenant.
func (a *admission) admit(name string, meta []byte) *rejection {
	m, err := decodeMeta(name, meta)
	if err != nil {
		return &rejection{reason: "metadata", err: fmt.Errorf("node %q: %w", name, err)}
	}
	if m.Tenant != a.self.Tenant {
		return &rejection{reason: "tenant", err: fmt.Errorf("node %q belongs to tenant %q, not %q", name, m.Tenant, a.self.Tenant)}
	}
	return nil
}

// reject counts and logs (once a minute per node and reason) a refused node.
func (a *admission) reject(r *rejection, name, via string) error {
	a.metrics.rejections.WithLabelValues(r.reason).Inc()
	if a.rejects.Allow(name + "\x00" + r.reason + "\x00" + via) {
		a.logger.Warn("refused a node that may not join this cluster", "node", name, "via", via,
			"reason", r.reason, "err", r.err)
	}
	return r
}

// NotifyAlive vets every alive message, whether gossiped, pushed/pulled or from a join.
func (a *admission) NotifyAlive(n *memberlist.Node) error {
	if r := a.admit(n.Name, n.Meta); r != nil {
		return a.reject(r, n.Name, "alive")
	}
	return nil
}

// NotifyMerge refuses to merge with a cluster that holds any node we would not admit, so a
// join across tenants fails on both sides instead of half-merging.
func (a *admission) NotifyMerge(peers []*memberlist.Node) error {
	for _, n := range peers {
		if r := a.admit(n.Name, n.Meta); r != nil {
			return a.reject(r, n.Name, "join")
		}
	}
	return nil
}

// delegate implements memberlist.Delegate: it only supplies our metadata.
type delegate Cluster

var _ memberlist.Delegate = (*delegate)(nil)

// NodeMeta returns the metadata fixed in New (checked there to fit the limit).
func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.selfMeta) > limit {
		// New checked against MetaMaxSize, which is what memberlist passes; a smaller limit
		// would be a memberlist change, and sending no metadata makes peers refuse us loudly.
		return nil
	}
	return d.selfMeta
}

// Kura carries no application messages or state over gossip: replication has its own plane.
// These four are therefore empty by design.

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}
