package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/kuracache/kura/bench/load"
)

// runRestart fills a fresh node with o.restartObjects blobs of 1 KiB, then measures the time
// from process start to /up and to /ready after a clean stop (SIGTERM) and after kill -9.
func runRestart(ctx context.Context, o options, dir string, add func(Row)) error {
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	srv := newKura("kura-restart", o.kuraBin, filepath.Join(dir, "restart"), ports, nil, nil)
	defer func() {
		srv.close()
		_ = o.cleanup(srv.dataDir)
	}()
	if _, _, err := srv.start(ctx, 60*time.Second); err != nil {
		return err
	}
	if err := fill(ctx, srv, o.restartObjects); err != nil {
		return err
	}
	for _, how := range []string{"clean stop", "kill -9"} {
		if how == "kill -9" {
			srv.kill()
		} else if err := srv.stop(60 * time.Second); err != nil {
			return err
		}
		up, ready, err := srv.start(ctx, 10*time.Minute)
		if err != nil {
			return err
		}
		st, err := readProc(srv.pid())
		if err != nil {
			return err
		}
		for _, m := range []struct {
			probe string
			took  time.Duration
		}{{"/up", up}, {"/ready", ready}} {
			row := Row{Workload: fmt.Sprintf("restart to %s after a %s, %s objects", m.probe, how, num(float64(o.restartObjects))),
				Group: "restart", Primary: primarySeconds, Seconds: m.took.Seconds(), Items: int64(o.restartObjects),
				CPUS: st.cpu.Seconds(), PeakRSSMiB: float64(st.peakKB) / 1024}
			add(row)
		}
	}
	return nil
}

// fill stores n fresh 1 KiB blobs with BatchUpdateBlobs of 500 from 4 clients.
func fill(ctx context.Context, srv *server, n int) error {
	r, err := load.NewREAPI(load.REAPIOptions{Addr: srv.grpcAddr, Instance: "bench", Batch: 1, Conns: 4, Chunk: 1 << 20})
	if err != nil {
		return err
	}
	defer r.Close()
	const batch = 500
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Go(func() {
			g := load.NewBlobGen(r.Uniq(), 1<<10, uint64(i)+99)
			cas := repb.NewContentAddressableStorageClient(r.Conn(i))
			bodies := make([][]byte, batch)
			for j := range bodies {
				bodies[j] = make([]byte, 1<<10)
			}
			for {
				from := next.Add(batch) - batch
				if from >= int64(n) || ctx.Err() != nil {
					return
				}
				req := &repb.BatchUpdateBlobsRequest{InstanceName: "bench"}
				for j := range min(batch, n-int(from)) {
					data, sum := g.Next()
					copy(bodies[j], data)
					req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: load.Digest(sum, 1<<10), Data: bodies[j]})
				}
				resp, err := cas.BatchUpdateBlobs(ctx, req)
				if err == nil {
					for _, it := range resp.GetResponses() {
						if it.GetStatus().GetCode() != 0 {
							err = fmt.Errorf("store: %s", it.GetStatus().GetMessage())
							break
						}
					}
				}
				if err != nil {
					errs <- fmt.Errorf("fill %s with %d objects: %w", srv.name, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func bsClient(r *load.REAPI, i int) bspb.ByteStreamClient { return bspb.NewByteStreamClient(r.Conn(i)) }

func sortDurations(d []time.Duration) { slices.Sort(d) }
