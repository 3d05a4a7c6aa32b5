package local

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// DeleteNamespace implements storage.Store: in one synced batch it records the tombstone (the
// larger of the old and new version) and deletes every manifest of the namespace, all kinds,
// that is not newer than it. A replicated write newer than the tombstone survives, as last
// writer wins demands. Segment bytes of the deleted objects become garbage that eviction
// reclaims; the segment index still names them and eviction skips them.
func (s *Store) DeleteNamespace(ctx context.Context, tenant, namespace string, version storage.Version) error {
	if err := storage.ValidateIdentifier("tenant_id", tenant); err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	if err := storage.ValidateIdentifier("namespace_id", namespace); err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return fmt.Errorf("delete namespace %s/%s: %w", tenant, namespace, err)
	}
	defer s.ops.leave()
	// Exclusive: no write of this namespace may sit between its tombstone check and its
	// commit while the deletion is decided.
	ns := s.nsLock(tenant, namespace)
	ns.Lock()
	defer func() {
		s.nsGen[s.nsStripe(tenant, namespace)].Add(1) // see Store.keyGen
		ns.Unlock()
	}()
	replicated := version != 0
	ctx, span := s.tracer.Start(ctx, commitSpanName)
	if span.IsRecording() {
		span.SetAttributes(attrOp.String("delete_namespace"), attrReplicated.Bool(replicated))
	}
	err := s.deleteNamespace(ctx, tenant, namespace, version, replicated)
	endCommit(span, err == nil, err)
	return err
}

// deleteNamespace decides and commits a deletion under the exclusive namespace lock.
func (s *Store) deleteNamespace(ctx context.Context, tenant, namespace string, version storage.Version, replicated bool) error {
	if version == 0 {
		version = s.clock.Now()
	} else {
		s.clock.Observe(version)
	}
	b := s.db.NewBatch()
	defer b.Close()
	// The scan that decides the deletion also XORs every deleted entry out of the digests;
	// the exclusive namespace lock keeps the namespace's manifests still until the commit.
	delta := new(meta.DigestTable)
	var removed []existKey // for the existence index: 16 bytes a deleted object or stub
	unknown := 0
	effective, err := b.DeleteNamespaceFunc(ctx, tenant, namespace, version, func(k storage.Key, m meta.Manifest, err error) {
		if err != nil {
			unknown++
			return
		}
		ek := meta.ManifestKey(k)
		e := digestOf(ek, k.Kind, &m)
		delta.Remove(e.bucket, &e.hash)
		if h, ok := s.exists.nsHash(ek); ok { // stubs too: the index also tracks them
			removed = append(removed, h)
		}
	})
	if err != nil {
		return classify(fmt.Sprintf("delete namespace %s/%s", tenant, namespace), err)
	}
	s.clock.Observe(effective)
	if s.opts.Observer != nil {
		c := storage.Change{Op: storage.ChangeDeleteNamespace, Tenant: tenant, Namespace: namespace, Version: effective, Replicated: replicated,
			Trace: trace.SpanContextFromContext(ctx)}
		if err := s.opts.Observer.OnCommit(b, c); err != nil {
			return fmt.Errorf("delete namespace %s/%s: replication hook: %w", tenant, namespace, err)
		}
	}
	// Committed or not (the outcome of a failed commit is unknown), the namespace's cached
	// manifests go; the exclusive lock keeps writers out until then.
	defer s.mcache.invalidateNamespace(tenant, namespace)
	if err := s.commitDelta(b, delta); err != nil {
		// Which objects went is unknown: the existence index starts afresh.
		s.exists.reset()
		s.kickDigestRebuild()
		return classify(fmt.Sprintf("delete namespace %s/%s", tenant, namespace), err)
	}
	s.exists.removed(tenant, namespace, removed)
	if unknown > 0 {
		s.kickDigestRebuild()
	}
	s.afterCommit()
	s.log.Info("namespace deleted", "tenant", tenant, "namespace", namespace, "tombstone", effective.String())
	return nil
}
