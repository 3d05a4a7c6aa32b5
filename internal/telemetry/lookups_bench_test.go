package telemetry

import (
	"strconv"
	"testing"
)

// BenchmarkNamespaceLookupsObserve is the cost every artifact read pays for the hit and miss
// counts: callers in parallel, over a few protocols and namespaces.
func BenchmarkNamespaceLookupsObserve(b *testing.B) {
	n := NewNamespaceLookups()
	protocols := []string{"nx", "gradle", "reapi", "bazel"}
	namespaces := make([]string, 16)
	for i := range namespaces {
		namespaces[i] = "ns-" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			result := "hit"
			if i%4 == 0 {
				result = "miss"
			}
			n.Observe(protocols[i%len(protocols)], "acme", namespaces[i%len(namespaces)], result)
			i++
		}
	})
}
