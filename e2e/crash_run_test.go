package e2e

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// plainGRPC is a plaintext client connection to node's REAPI port, closed with the test.
func plainGRPC(t *testing.T, node *Node) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(node.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// crashRequest prepares request id of a crash run: the objects it carries and send, which
// performs it and reports which objects were acknowledged (err: the request failed).
type crashRequest func(rng *rand.Rand, id int) (ups []crashUpload, send func(ctx context.Context) (acked []bool, err error))

// runCrashKill drives writers concurrent clients, each sending requests made by next, until
// acks requests were answered or 20 s passed; SIGKILLs the node, restarts it and checks that
// every acknowledged object reads back byte-identical and that the objects of requests cut
// off by the crash are absent or whole. name labels the figure it reports.
func runCrashKill(t *testing.T, node *Node, name string, writers, acks int, next crashRequest) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var (
		mu       sync.Mutex
		acked    []crashUpload
		inFlight = map[int][]crashUpload{}
		nextID   atomic.Int64
		ackCount atomic.Int64
		killed   atomic.Bool
		failures []string
		wg       sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	enough := make(chan struct{})
	var enoughOnce sync.Once
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for ctx.Err() == nil {
				id := int(nextID.Add(1))
				ups, send := next(rng, id)
				mu.Lock()
				inFlight[id] = ups
				mu.Unlock()
				ok, err := send(ctx)
				mu.Lock()
				if err == nil {
					delete(inFlight, id)
					for j, up := range ups {
						if ok[j] {
							acked = append(acked, up)
						} else if !killed.Load() {
							failures = append(failures, "refused: "+up.url)
						}
					}
				} else if !killed.Load() {
					delete(inFlight, id)
					failures = append(failures, err.Error())
				}
				mu.Unlock()
				if err != nil {
					return
				}
				if ackCount.Add(1) >= int64(acks) {
					enoughOnce.Do(func() { close(enough) })
				}
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(20 * time.Second):
	}
	mu.Lock()
	killed.Store(true)
	inFlightAtKill := len(inFlight)
	mu.Unlock()
	node.Kill()
	cancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	for i, f := range failures {
		if i == 10 {
			break
		}
		t.Errorf("before the kill: %s", f)
	}
	if len(acked) == 0 {
		t.Fatalf("%s: nothing was acknowledged before the kill", name)
	}
	if inFlightAtKill == 0 {
		t.Fatalf("%s: no request was in flight at SIGKILL; the crash did not interrupt any write", name)
	}
	node.Restart()
	for _, up := range acked {
		if found, problem := readCrashUpload(up); !found || problem != "" {
			t.Errorf("%s: acknowledged %s (%d bytes) lost or damaged: found=%v %s", name, up.url, up.size, found, problem)
		}
	}
	present, absent := 0, 0
	for _, ups := range inFlight {
		for _, up := range ups {
			found, problem := readCrashUpload(up)
			switch {
			case problem != "":
				t.Errorf("%s: cut-off object is torn: %s", name, problem)
			case found:
				present++
			default:
				absent++
			}
		}
	}
	figure(t, "%s SIGKILL: %d objects acknowledged and intact; %d requests in flight at the kill: %d objects complete, %d absent",
		name, len(acked), inFlightAtKill, present, absent)
}
