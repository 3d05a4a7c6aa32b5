package httpapi

import "github.com/kuracache/kura/analytics"

// EventRecorder receives one analytics event per successful Xcode CAS or Gradle transfer
// (docs/contract.md §9). Record is called on the request path after the answer is decided, so it must not
// block; it must be safe for concurrent use. *analytics.Reporter satisfies it.
type EventRecorder interface {
	Record(analytics.Event)
}

var _ EventRecorder = (*analytics.Reporter)(nil)

// recordTransfer reports a transfer of size bytes of t when t's surface has an analytics
// pipeline. Only transfers that really moved an artifact are reported: a stored upload (or
// one whose body was received in full and lost a race to an identical write), and a download
// whose body was sent to the end. Misses, refusals, failures, 304s and writes answered
// "already exists" without reading the body are not.
func (s *Server) recordTransfer(t target, action analytics.Action, size int64) {
	if s.events == nil {
		return
	}
	var p analytics.Pipeline
	switch t.surface {
	case sfXcode:
		p = analytics.Xcode
	case sfGradle:
		p = analytics.Gradle
	default:
		return
	}
	s.events.Record(analytics.Event{
		Pipeline: p, TenantID: t.key.Tenant, NamespaceID: t.key.Namespace,
		Action: action, Size: size, Key: t.key.Name,
	})
}
