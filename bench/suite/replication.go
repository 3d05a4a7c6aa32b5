package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kuracache/kura/bench/load"
	"github.com/kuracache/kura/cluster/peer/peerpb"
)

// startPair starts two clustered Kura nodes on loopback, each seeded with the other's gossip
// address, and waits until both are ready and see each other.
func startPair(ctx context.Context, o options, dir string) (a, b *server, err error) {
	pa, err := freePorts(4)
	if err != nil {
		return nil, nil, err
	}
	pb, err := freePorts(4)
	if err != nil {
		return nil, nil, err
	}
	a = newKura("kura-a", o.kuraBin, filepath.Join(dir, "a"), pa, []string{loopback(pb[2])}, nil)
	var extra map[string]string
	if o.pprof != "" {
		// The receiving node is the one profiled: it applies every replicated write.
		extra = map[string]string{"KURA_PPROF_ADDRESS": o.pprof}
	}
	b = newKura("kura-b", o.kuraBin, filepath.Join(dir, "b"), pb, []string{loopback(pa[2])}, extra)
	// Both start before either is waited for: a node with seeds stays joining until its first
	// anti-entropy round against a peer.
	errs := make(chan error, 2)
	for _, s := range []*server{a, b} {
		go func() { _, _, err := s.start(ctx, 90*time.Second); errs <- err }() // owned: start returns within its timeout
	}
	err = nil
	for range 2 {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		a.close()
		b.close()
		return nil, nil, err
	}
	for _, s := range []*server{a, b} {
		if err := waitMembers(ctx, s, 2, 60*time.Second); err != nil {
			a.close()
			b.close()
			return nil, nil, err
		}
	}
	return a, b, nil
}

// waitMembers polls /up until the node counts n live ring members.
func waitMembers(ctx context.Context, s *server, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := client.Get("http://" + s.httpAddr + "/up")
		if err == nil {
			var up struct {
				RingMembers int `json:"ring_members"`
			}
			err = json.NewDecoder(resp.Body).Decode(&up)
			resp.Body.Close()
			if err == nil && up.RingMembers >= n {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not see %d ring members within %s", s.name, n, timeout)
}

// ack is one write acknowledged by A.
type ack struct {
	hash string
	size int64
	at   time.Time
}

// runReplication measures replication between two local nodes: writers put fresh blobs on A
// for o.duration, and a poller asks B's internal plane (FindObjects: B's own store only, so
// read-through cannot make a blob look replicated) which of the acknowledged ones it holds.
// Lag is from A's acknowledgement to the first poll that finds the blob on B; throughput is
// the replicated objects (bytes) over the time from the first write to the last arrival.
func runReplication(ctx context.Context, o options, dir string, add func(Row)) error {
	a, b, err := startPair(ctx, o, dir)
	if err != nil {
		return err
	}
	defer func() {
		a.close()
		b.close()
		_ = o.cleanup(dir)
	}()
	conn, err := grpc.NewClient(b.internalAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	plane := peerpb.NewReplicationClient(conn)
	r, err := load.NewREAPI(load.REAPIOptions{Addr: a.grpcAddr, Instance: "bench", Batch: 1, Conns: 4, Chunk: 1 << 20})
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.Ping(ctx); err != nil {
		return err
	}
	for _, w := range []struct {
		label   string
		size    int
		clients int
		primary string
	}{
		{"replication A→B 1 KiB (lag p50/p99)", 1 << 10, 16, primaryOps},
		{"replication A→B 64 MiB (lag p50/p99)", 64 << 20, 2, primaryMiB},
	} {
		row, err := replicate(ctx, o, r, plane, a, b, w.size, w.clients)
		if err != nil {
			return err
		}
		row.Workload, row.Group, row.Primary = w.label, "replication", w.primary
		add(row)
	}
	return nil
}

func replicate(ctx context.Context, o options, r *load.REAPI, plane peerpb.ReplicationClient, a, b *server, size, clients int) (Row, error) {
	beforeA, err := readProc(a.pid())
	if err != nil {
		return Row{}, err
	}
	beforeB, err := readProc(b.pid())
	if err != nil {
		return Row{}, err
	}
	acks := make(chan ack, 1<<18)
	gens := make([]*load.BlobGen, clients) // before the clock starts: a 64 MiB generator takes a while
	for i := range gens {
		gens[i] = load.NewBlobGen(r.Uniq(), size, uint64(i)+7)
	}
	start := time.Now()
	var writers sync.WaitGroup
	var writeRes *load.Result
	writers.Go(func() {
		writeRes = load.Run(ctx, o.duration, clients, func(i int) load.Op {
			g := gens[i]
			cas := repb.NewContentAddressableStorageClient(r.Conn(i))
			bs := bsClient(r, i)
			return func(ctx context.Context) (int64, int64, error) {
				if size > 1<<20 {
					data, sum := g.Next()
					d := load.Digest(sum, size)
					if err := load.WriteBlob(ctx, bs, "bench", data, d, 1<<20); err != nil {
						return 0, 0, err
					}
					acks <- ack{hash: d.GetHash(), size: int64(size), at: time.Now()}
					return 1, int64(size), nil
				}
				// o.batch blobs per request (1 by default: a build's small uploads one by one).
				req := &repb.BatchUpdateBlobsRequest{InstanceName: "bench"}
				for range o.batch {
					data, sum := g.Next() // valid until the next call: the request keeps a copy
					req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: load.Digest(sum, size), Data: bytes.Clone(data)})
				}
				resp, err := cas.BatchUpdateBlobs(ctx, req)
				if err != nil {
					return 0, 0, err
				}
				now := time.Now()
				for _, r := range resp.GetResponses() {
					if c := r.GetStatus().GetCode(); c != 0 {
						return 0, 0, fmt.Errorf("BatchUpdateBlobs: code %d", c)
					}
					acks <- ack{hash: r.GetDigest().GetHash(), size: int64(size), at: now}
				}
				return int64(len(req.Requests)), int64(size * len(req.Requests)), nil
			}
		})
		close(acks)
	})

	// The poller runs here, until every acknowledged blob is on B or the catch-up time is over.
	// It asks about the oldest pollWindow unseen blobs only: replication delivers roughly in
	// order, and asking B about thousands of keys a millisecond would cost B more CPU than the
	// replication being measured.
	const pollWindow = 256
	var pending []ack // in acknowledgement order
	var lags []time.Duration
	var replicated, bytes int64
	var last time.Time
	writing := true
	var catchUpEnds time.Time
	keys := make([]*peerpb.ObjectKey, 0, pollWindow)
	for writing || len(pending) > 0 {
		for drained := false; !drained; {
			select {
			case k, ok := <-acks:
				if !ok {
					writing, acks = false, nil
					catchUpEnds = time.Now().Add(max(30*time.Second, 4*o.duration))
					drained = true
					break
				}
				pending = append(pending, k)
			default:
				drained = true
			}
		}
		if !writing && (time.Now().After(catchUpEnds) || ctx.Err() != nil) {
			break
		}
		if len(pending) == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		window := pending[:min(len(pending), pollWindow)]
		keys = keys[:0]
		for _, k := range window {
			keys = append(keys, &peerpb.ObjectKey{Tenant: "default", Namespace: "bench", Kind: "cas", Name: k.hash})
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := plane.FindObjects(cctx, &peerpb.FindObjectsRequest{Keys: keys})
		cancel()
		now := time.Now()
		if err != nil {
			if acks != nil {
				for range acks { // let the writers finish: they block on a full channel otherwise
				}
			}
			writers.Wait()
			return Row{}, fmt.Errorf("FindObjects on %s: %w", b.name, err)
		}
		present := make(map[string]bool, len(resp.GetPresent()))
		for _, p := range resp.GetPresent() {
			present[p.GetKey().GetName()] = true
		}
		rest := pending[:0]
		for i, k := range pending {
			if i < len(window) && present[k.hash] {
				lags = append(lags, now.Sub(k.at))
				replicated++
				bytes += k.size
				last = now
				continue
			}
			rest = append(rest, k)
		}
		pending = rest
		time.Sleep(time.Millisecond) // one poll per millisecond: the lag's resolution
	}
	writers.Wait()
	afterA, err := readProc(a.pid())
	if err != nil {
		return Row{}, err
	}
	afterB, err := readProc(b.pid())
	if err != nil {
		return Row{}, err
	}
	elapsed := last.Sub(start)
	res := &load.Result{Requests: replicated, Items: replicated, Bytes: bytes, Errors: writeRes.Errors + int64(len(pending)),
		Elapsed: elapsed, Latencies: lags, FirstErr: writeRes.FirstErr}
	if len(pending) > 0 && res.FirstErr == nil {
		res.FirstErr = fmt.Errorf("%d acknowledged blobs not on %s after the catch-up time", len(pending), b.name)
	}
	sortDurations(res.Latencies)
	row := fromResult(res)
	row.Clients = clients
	row.setCPU(afterA.cpu-beforeA.cpu+afterB.cpu-beforeB.cpu, max(afterA.peakKB, afterB.peakKB))
	return row, nil
}
