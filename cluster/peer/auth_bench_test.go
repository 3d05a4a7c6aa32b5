package peer

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/kuracache/kura/cluster/peer/peerpb"
)

var benchSink string

// BenchmarkCredentialSign measures the credential header value a keyed client computes for
// every call.
func BenchmarkCredentialSign(b *testing.B) {
	millis := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC).UnixMilli()
	s := newSigner(clusterKey, nil)
	b.ReportAllocs()
	for b.Loop() {
		benchSink = s.mac.format(peerpb.Replication_PushObject_FullMethodName, millis)
	}
}

// BenchmarkCredentialVerify measures the check a keyed server runs on every incoming call:
// read the header, parse it, recompute the MAC, compare, check the skew.
func BenchmarkCredentialVerify(b *testing.B) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	c, err := newChecker(ServerConfig{PlaneKey: clusterKey}, slog.New(slog.DiscardHandler), func() time.Time { return now })
	if err != nil {
		b.Fatal(err)
	}
	method := peerpb.Replication_PushObject_FullMethodName
	header := newPlaneMAC(clusterKey).format(method, now.UnixMilli())
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(credentialHeader, header,
		"content-type", "application/grpc", "user-agent", "grpc-go/1.85.0", ":authority", "10.0.0.2:7443"))
	b.ReportAllocs()
	for b.Loop() {
		if reason, msg := c.refuse(ctx, method); reason != "" {
			b.Fatal(msg)
		}
	}
}
