package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/bench/load"
)

// timed runs newOp on clients workers for d against srv and turns the result into a row with
// the server's CPU time over exactly the timed run and its peak RSS after it.
func timed(ctx context.Context, srv *server, d time.Duration, clients int, newOp func(int) load.Op) (Row, error) {
	before, err := readProc(srv.pid())
	if err != nil {
		return Row{}, err
	}
	res := load.Run(ctx, d, clients, newOp)
	after, err := readProc(srv.pid())
	if err != nil {
		return Row{}, err
	}
	row := fromResult(res)
	row.Clients = clients
	row.setCPU(after.cpu-before.cpu, after.peakKB)
	return row, nil
}

// reapiRows are the REAPI workloads of issue 11's table.
var reapiRows = []struct {
	label, scenario string
	clients         int
	primary, limit  string
}{
	{"CAS write 1 KiB (BatchUpdate)", "batch-update-1k", 16, primaryOps, limitAppends},
	{"CAS read 1 KiB (BatchRead)", "batch-read-1k", 64, primaryOps, ""},
	{"ByteStream write 64 MiB", "bs-write-64m", 2, primaryMiB, limitSHA256},
	{"ByteStream read 64 MiB", "bs-read-64m", 2, primaryMiB, limitLoopback},
	{"FindMissingBlobs 1,000 digests (p50)", "find-missing-1000", 1, primaryP50, ""},
	{"ActionCache update", "ac-update", 16, primaryOps, limitAppends},
	{"ActionCache get", "ac-get", 64, primaryOps, ""},
}

func runREAPI(ctx context.Context, o options, srv *server, add func(Row)) error {
	b, err := load.NewREAPI(load.REAPIOptions{Addr: srv.grpcAddr, Instance: "bench", Batch: o.batch, Conns: 4, Chunk: 1 << 20})
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.Ping(ctx); err != nil {
		return err
	}
	for _, w := range reapiRows {
		newOp, err := b.Setup(ctx, w.scenario)
		if err != nil {
			// A workload that cannot run (a full disk, say) is reported, not the end of the suite.
			add(failed(w.label, "reapi", w.primary, w.clients, fmt.Errorf("set up: %w", err)))
			continue
		}
		row, err := timed(ctx, srv, o.duration, w.clients, newOp)
		if err != nil {
			return err
		}
		row.Workload, row.Group, row.Primary, row.Limit = w.label, "reapi", w.primary, w.limit
		add(row)
	}
	return nil
}

// surface is one HTTP cache protocol: where an object of a key lives and how it is written.
type surface struct {
	name      string
	putMethod string
	path      func(key string) string
	// key names a new object from the SHA-256 of its body and a unique number.
	key func(sum [32]byte, n uint64) string
	// body, when set, is the fixed body of every object (the key alone is unique), for
	// protocols that parse what they store.
	body      func(size int) []byte
	bazelOnly bool // served by bazel-remote too
}

// The surfaces: the Bazel HTTP cache (which bazel-remote serves too), Nx and Xcode CAS.
var surfaces = []surface{
	{name: "Bazel HTTP /cas/", putMethod: http.MethodPut, bazelOnly: true,
		path: func(k string) string { return "/cas/" + k },
		key:  func(sum [32]byte, _ uint64) string { return hex.EncodeToString(sum[:]) }},
	{name: "Bazel HTTP /ac/", putMethod: http.MethodPut, bazelOnly: true,
		path: func(k string) string { return "/ac/" + k },
		key: func(_ [32]byte, n uint64) string {
			var b [16]byte
			binary.LittleEndian.PutUint64(b[:], n)
			copy(b[8:], "kura-ac!")
			sum := sha256.Sum256(b[:])
			return hex.EncodeToString(sum[:])
		},
		// bazel-remote validates /ac/ bodies as ActionResult messages: a valid one, padded to
		// the size with stdout_raw (which references no blob).
		body: func(size int) []byte {
			pad := max(0, size-8)
			b, err := proto.Marshal(&repb.ActionResult{StdoutRaw: bytes.Repeat([]byte{'x'}, pad)})
			if err != nil {
				panic(err)
			}
			return b
		}},
	{name: "Nx /v1/cache/", putMethod: http.MethodPut,
		path: func(k string) string { return "/v1/cache/" + k },
		key: func(sum [32]byte, n uint64) string {
			return strconv.FormatUint(binary.LittleEndian.Uint64(sum[:8]), 10) + strconv.FormatUint(n, 10)
		}},
	{name: "Xcode CAS", putMethod: http.MethodPost,
		path: func(k string) string { return "/api/cache/cas/" + k + "?tenant_id=default&namespace_id=bench" },
		key:  func(sum [32]byte, _ uint64) string { return hex.EncodeToString(sum[:]) }},
}

// httpSizes are the object sizes and their client counts.
var httpSizes = []struct {
	label   string
	size    int
	clients int
}{{"1 KiB", 1 << 10, 64}, {"1 MiB", 1 << 20, 4}}

func runHTTP(ctx context.Context, o options, srv *server, bazelRemote bool, add func(Row)) error {
	u := &load.Uniq{}
	seed := uint64(time.Now().UnixNano())
	binary.LittleEndian.PutUint64(u.Nonce[:], seed)
	for _, sf := range surfaces {
		if bazelRemote && !sf.bazelOnly {
			continue
		}
		for _, sz := range httpSizes {
			if sf.body != nil && sz.size > 1<<10 {
				continue // action results are small
			}
			client := &http.Client{Transport: &http.Transport{
				MaxIdleConns: sz.clients, MaxIdleConnsPerHost: sz.clients, DisableCompression: true,
			}}
			base := "http://" + srv.httpAddr
			put := func(ctx context.Context, key string, body []byte) error {
				req, err := http.NewRequestWithContext(ctx, sf.putMethod, base+sf.path(key), bytes.NewReader(body))
				if err != nil {
					return err
				}
				req.Header.Set("Content-Type", "application/octet-stream")
				resp, err := client.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					return fmt.Errorf("%s %s: %s", sf.putMethod, sf.path(key), resp.Status)
				}
				return nil
			}
			newPut := func(worker int) load.Op {
				g := load.NewBlobGen(u, sz.size, seed+uint64(worker))
				var fixed []byte
				if sf.body != nil {
					fixed = sf.body(sz.size)
				}
				return func(ctx context.Context) (int64, int64, error) {
					body, sum := g.Next()
					if fixed != nil {
						body = fixed
					}
					if err := put(ctx, sf.key(sum, u.Next()), body); err != nil {
						return 0, 0, err
					}
					return 1, int64(len(body)), nil
				}
			}
			row, err := timed(ctx, srv, o.duration, sz.clients, newPut)
			if err != nil {
				return err
			}
			row.Workload, row.Group, row.Primary = fmt.Sprintf("HTTP PUT %s %s", sf.name, sz.label), "http", primaryOps
			row.Limit = limitAppends
			if sz.size >= 1<<20 {
				row.Primary, row.Limit = primaryMiB, limitSHA256
			}
			add(row)

			// GET: a data set uploaded first (untimed), read at random.
			count := 1000
			if sz.size >= 1<<20 {
				count = 16
			}
			keys := make([]string, count)
			g := load.NewBlobGen(u, sz.size, seed+1_000_000)
			getLabel := fmt.Sprintf("HTTP GET %s %s", sf.name, sz.label)
			var setupErr error
			for i := range keys {
				body, sum := g.Next()
				if sf.body != nil {
					body = sf.body(sz.size)
				}
				keys[i] = sf.key(sum, u.Next())
				if setupErr = put(ctx, keys[i], body); setupErr != nil {
					break
				}
			}
			if setupErr != nil {
				add(failed(getLabel, "http", primaryOps, sz.clients, fmt.Errorf("upload the data set: %w", setupErr)))
				client.CloseIdleConnections()
				continue
			}
			newGet := func(worker int) load.Op {
				rng := mrand.New(mrand.NewPCG(seed, uint64(worker)))
				return func(ctx context.Context) (int64, int64, error) {
					key := keys[rng.IntN(len(keys))]
					req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+sf.path(key), nil)
					if err != nil {
						return 0, 0, err
					}
					resp, err := client.Do(req)
					if err != nil {
						return 0, 0, err
					}
					n, err := io.Copy(io.Discard, resp.Body) // Discard's pooled buffer: no allocation per response
					resp.Body.Close()
					if err != nil {
						return 0, 0, err
					}
					if resp.StatusCode != http.StatusOK {
						return 0, 0, fmt.Errorf("GET %s: %s", sf.path(key), resp.Status)
					}
					return 1, n, nil
				}
			}
			row, err = timed(ctx, srv, o.duration, sz.clients, newGet)
			if err != nil {
				return err
			}
			row.Workload, row.Group, row.Primary = getLabel, "http", primaryOps
			if sz.size >= 1<<20 {
				row.Primary, row.Limit = primaryMiB, limitLoopback
			}
			add(row)
			client.CloseIdleConnections()
		}
	}
	return nil
}

// failed is the row of a workload that could not run.
func failed(label, group, primary string, clients int, err error) Row {
	return Row{Workload: label, Group: group, Primary: primary, Clients: clients, Errors: 1, FirstError: err.Error()}
}
