package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// clusterTenant is the tenant of every object the cluster suite writes: kura's default
// KURA_TENANT_ID, so the protocols that take their tenant from the configuration (Nx, Metro,
// Bazel, REAPI) and those that name it (Xcode, keyvalue, Gradle, module) land in the same
// tenant, and one namespace clean covers them all.
const clusterTenant = "default"

// Kinds of objects the cluster suite writes: every public surface that stores something.
const (
	kindXcode     = "xcode"
	kindKeyValue  = "keyvalue"
	kindGradle    = "gradle"
	kindModule    = "module"
	kindNx        = "nx"
	kindMetro     = "metro"
	kindBazelCAS  = "bazel-cas"  // Bazel HTTP cache /{ns}/cas/{sha256}
	kindBazelAC   = "bazel-ac"   // Bazel HTTP cache /{ns}/ac/{sha256}
	kindREAPIBlob = "reapi-blob" // REAPI CAS blob (BatchUpdateBlobs, or ByteStream for big ones)
	kindREAPIAC   = "reapi-ac"   // REAPI action result whose output file is a blob written with it
	kindObjects   = "objects"    // plain HTTP objects /api/cache/objects/{tenant}/{ns}/{key…} (ccache)
)

var everyKind = []string{kindXcode, kindKeyValue, kindGradle, kindModule, kindNx, kindMetro, kindBazelCAS, kindBazelAC, kindREAPIBlob, kindREAPIAC, kindObjects}

// clusterObject is one artifact written through a public surface of one node and read back
// through the same surface of any node.
type clusterObject struct {
	kind      string
	namespace string
	id        string   // the protocol's key (hash, cache key, cas id, action digest…)
	body      []byte   // the stored bytes; for reapi-ac the output file's contents
	values    []string // keyvalue entries
	// stored is how many store objects the write creates (reapi-ac stores the action result
	// and its output blob).
	stored int
	action *repb.ActionResult // reapi-ac
}

func (o *clusterObject) String() string {
	return fmt.Sprintf("%s %s/%s", o.kind, o.namespace, o.id)
}

// objectGen makes reproducible objects: the same seed gives the same keys and bodies.
type objectGen struct {
	rng *rand.Rand
	seq int
}

func newObjectGen(seed string) *objectGen {
	return &objectGen{rng: rand.New(rand.NewChaCha8(sha256.Sum256([]byte(seed))))}
}

func (g *objectGen) bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.rng.Uint32())
	}
	return b
}

func (g *objectGen) hexID(n int) string { return hex.EncodeToString(g.bytes(n)) }

// object returns a new object of kind in namespace with a body of size bytes (keyvalue
// documents carry the body as hex text in their first entry).
func (g *objectGen) object(kind, namespace string, size int) *clusterObject {
	g.seq++
	o := &clusterObject{kind: kind, namespace: namespace, stored: 1}
	switch kind {
	case kindXcode, kindGradle:
		o.id = fmt.Sprintf("e2e-%d-%s", g.seq, g.hexID(8))
		o.body = g.bytes(size)
	case kindMetro:
		o.id = g.hexID(20) // Metro keys are hex
		o.body = g.bytes(size)
	case kindObjects:
		id := g.hexID(20) // ccache's subdirs layout: two characters, a slash, the rest
		o.id = id[:2] + "/" + id[2:]
		o.body = g.bytes(size)
	case kindModule:
		o.id = g.hexID(16) // the hash; the artifact name is fixed
		o.body = g.bytes(size)
	case kindNx:
		o.id = fmt.Sprint(g.rng.Uint64()) // Nx hashes are decimal
		o.body = g.bytes(size)
	case kindKeyValue:
		o.id = fmt.Sprintf("kv-%d-%s", g.seq, g.hexID(8))
		o.values = []string{hex.EncodeToString(g.bytes(min(size, 32<<10))), o.id}
	case kindBazelCAS, kindREAPIBlob:
		o.body = g.bytes(size)
		sum := sha256.Sum256(o.body)
		o.id = hex.EncodeToString(sum[:])
	case kindBazelAC:
		o.id = g.hexID(32) // an action digest; the HTTP cache treats the result as opaque bytes
		o.body = g.bytes(size)
	case kindREAPIAC:
		o.id = g.hexID(32)
		o.body = g.bytes(size)
		o.stored = 2
		o.action = &repb.ActionResult{
			ExitCode:    0,
			OutputFiles: []*repb.OutputFile{{Path: fmt.Sprintf("out/%d.bin", g.seq), Digest: digestOf(o.body)}},
		}
	default:
		panic("unknown kind " + kind)
	}
	return o
}

// keyValue returns a keyvalue document with the given cas_id and entries.
func (g *objectGen) keyValue(namespace, casID string, values ...string) *clusterObject {
	return &clusterObject{kind: kindKeyValue, namespace: namespace, id: casID, values: values, stored: 1}
}

// mixed returns n small objects cycling through every kind (bodies of 100 B to 4 KiB).
func (g *objectGen) mixed(n int, namespace string) []*clusterObject {
	objs := make([]*clusterObject, n)
	for i := range objs {
		objs[i] = g.object(everyKind[i%len(everyKind)], namespace, 100+g.rng.IntN(4<<10))
	}
	return objs
}

// storedCount is how many store objects writing objs creates.
func storedCount(objs []*clusterObject) int {
	n := 0
	for _, o := range objs {
		n += o.stored
	}
	return n
}

func digestOf(b []byte) *repb.Digest {
	sum := sha256.Sum256(b)
	return &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: int64(len(b))}
}

func (o *clusterObject) query() string {
	return "tenant_id=" + clusterTenant + "&namespace_id=" + url.QueryEscape(o.namespace)
}

func (o *clusterObject) moduleQuery() string {
	return o.query() + "&hash=" + o.id + "&name=Module.zip"
}

// readURL is where the object is read on node n (HTTP kinds).
func (o *clusterObject) readURL(n *Node) string {
	base := n.URL()
	switch o.kind {
	case kindXcode:
		return base + "/api/cache/cas/" + o.id + "?" + o.query()
	case kindKeyValue:
		return base + "/api/cache/keyvalue/" + o.id + "?" + o.query()
	case kindGradle:
		return base + "/api/cache/gradle/" + clusterTenant + "/" + o.namespace + "/" + o.id
	case kindModule:
		return base + "/api/cache/module/artifact?" + o.moduleQuery()
	case kindNx:
		return base + "/api/nx/" + clusterTenant + "/" + o.namespace + "/v1/cache/" + o.id
	case kindMetro:
		return base + "/api/metro/cache/" + o.id + "?" + o.query()
	case kindBazelCAS:
		return base + "/" + o.namespace + "/cas/" + o.id
	case kindBazelAC:
		return base + "/" + o.namespace + "/ac/" + o.id
	case kindObjects:
		return base + "/api/cache/objects/" + clusterTenant + "/" + o.namespace + "/" + o.id
	}
	panic("no HTTP read URL for " + o.kind)
}

// write stores the object through node n's public surface.
func (o *clusterObject) write(k *clusterKit, n *Node) error {
	base := n.URL()
	expect := func(what string, r request, want int) error {
		got, err := tryDo(r)
		if err != nil {
			return fmt.Errorf("%s: %s on %s: %w", o, what, n.Name, err)
		}
		if got.Status != want {
			return fmt.Errorf("%s: %s on %s: got %s, want %d", o, what, n.Name, got, want)
		}
		return nil
	}
	put := func(method string, want int) error {
		return expect(method, request{Method: method, URL: o.readURL(n), Body: bytes.NewReader(o.body)}, want)
	}
	switch o.kind {
	case kindXcode:
		return put(http.MethodPost, http.StatusNoContent)
	case kindGradle, kindObjects:
		return put(http.MethodPut, http.StatusCreated)
	case kindNx:
		return expect("PUT", request{Method: http.MethodPut, URL: o.readURL(n), Body: bytes.NewReader(o.body),
			Header: map[string]string{"Content-Type": "application/octet-stream", "Authorization": "Bearer e2e"}}, http.StatusOK)
	case kindMetro:
		// Metro streams its body chunked, without Content-Length.
		return expect("PUT", request{Method: http.MethodPut, URL: o.readURL(n), Body: io.MultiReader(bytes.NewReader(o.body))}, http.StatusOK)
	case kindBazelCAS, kindBazelAC:
		return put(http.MethodPut, http.StatusOK)
	case kindKeyValue:
		entries := make([]map[string]string, len(o.values))
		for i, v := range o.values {
			entries[i] = map[string]string{"value": v}
		}
		doc, err := json.Marshal(map[string]any{"cas_id": o.id, "entries": entries})
		if err != nil {
			return err
		}
		return expect("PUT", request{Method: http.MethodPut, URL: base + "/api/cache/keyvalue?" + o.query(), Body: bytes.NewReader(doc),
			Header: map[string]string{"Content-Type": "application/json"}}, http.StatusNoContent)
	case kindModule:
		return o.writeModule(n)
	case kindREAPIBlob:
		return writeREAPIBlob(k, n, o.namespace, o.body)
	case kindREAPIAC:
		if err := writeREAPIBlob(k, n, o.namespace, o.body); err != nil {
			return fmt.Errorf("%s: output blob: %w", o, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		_, err := repb.NewActionCacheClient(k.reapiConn(n)).UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
			InstanceName: o.namespace, ActionDigest: &repb.Digest{Hash: o.id, SizeBytes: 142}, ActionResult: o.action,
			DigestFunction: repb.DigestFunction_SHA256,
		})
		if err != nil {
			return fmt.Errorf("%s: UpdateActionResult on %s: %w", o, n.Name, err)
		}
		return nil
	}
	return fmt.Errorf("unknown kind %q", o.kind)
}

// modulePart is the size of the parts a module upload is split into (the limit is 10 MiB).
const modulePart = 6 << 20

func (o *clusterObject) writeModule(n *Node) error {
	base := n.URL()
	got, err := tryDo(request{Method: http.MethodPost, URL: base + "/api/cache/module/start?" + o.moduleQuery()})
	if err != nil || got.Status != http.StatusOK {
		return fmt.Errorf("%s: start on %s: %v %v", o, n.Name, got, err)
	}
	var started struct {
		UploadID *string `json:"upload_id"`
	}
	if err := json.Unmarshal(got.Body, &started); err != nil || started.UploadID == nil {
		return fmt.Errorf("%s: start on %s: body %s (%v), want an upload_id", o, n.Name, got, err)
	}
	id := url.QueryEscape(*started.UploadID)
	var parts []int
	for off, part := 0, 1; off < len(o.body) || part == 1; off, part = off+modulePart, part+1 {
		chunk := o.body[off:min(off+modulePart, len(o.body))]
		got, err := tryDo(request{Method: http.MethodPost, URL: fmt.Sprintf("%s/api/cache/module/part?upload_id=%s&part_number=%d", base, id, part), Body: bytes.NewReader(chunk)})
		if err != nil || got.Status != http.StatusNoContent {
			return fmt.Errorf("%s: part %d on %s: %v %v", o, part, n.Name, got, err)
		}
		parts = append(parts, part)
	}
	doc, _ := json.Marshal(map[string][]int{"parts": parts})
	got, err = tryDo(request{Method: http.MethodPost, URL: base + "/api/cache/module/complete?upload_id=" + id, Body: bytes.NewReader(doc),
		Header: map[string]string{"Content-Type": "application/json"}})
	if err != nil || got.Status != http.StatusNoContent {
		return fmt.Errorf("%s: complete on %s: %v %v", o, n.Name, got, err)
	}
	return nil
}

// bytestreamChunk is the size of ByteStream write and the threshold above which a REAPI blob
// is streamed rather than sent in a batch.
const bytestreamChunk = 256 << 10

func writeREAPIBlob(k *clusterKit, n *Node, instance string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	d := digestOf(body)
	if len(body) <= 1<<20 {
		resp, err := repb.NewContentAddressableStorageClient(k.reapiConn(n)).BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{
			InstanceName: instance, DigestFunction: repb.DigestFunction_SHA256,
			Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d, Data: body}},
		})
		if err != nil {
			return fmt.Errorf("BatchUpdateBlobs on %s: %w", n.Name, err)
		}
		for _, r := range resp.GetResponses() {
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
				return fmt.Errorf("BatchUpdateBlobs on %s: blob %s: %v %s", n.Name, r.GetDigest().GetHash(), c, r.GetStatus().GetMessage())
			}
		}
		return nil
	}
	resource := fmt.Sprintf("%s/uploads/%s/blobs/%s/%d", instance, uuid.NewString(), d.Hash, d.SizeBytes)
	if err := byteStreamUpload(ctx, bspb.NewByteStreamClient(k.reapiConn(n)), resource, body, bytestreamChunk); err != nil {
		return fmt.Errorf("ByteStream.Write %s on %s: %w", resource, n.Name, err)
	}
	return nil
}

// readREAPIBlob reads a blob over ByteStream; found is false on NOT_FOUND.
func readREAPIBlob(k *clusterKit, n *Node, instance string, d *repb.Digest) (data []byte, found bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	stream, err := bspb.NewByteStreamClient(k.reapiConn(n)).Read(ctx, &bspb.ReadRequest{
		ResourceName: fmt.Sprintf("%s/blobs/%s/%d", instance, d.GetHash(), d.GetSizeBytes()),
	})
	if err != nil {
		return nil, false, err
	}
	var buf bytes.Buffer
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return buf.Bytes(), true, nil
		}
		if status.Code(err) == codes.NotFound {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("ByteStream.Read on %s: %w", n.Name, err)
		}
		buf.Write(msg.GetData())
	}
}

// read reads the object from node n: found is false when the node answers "not found";
// problem describes anything else that is wrong ("" when the object is intact).
func (o *clusterObject) read(k *clusterKit, n *Node) (found bool, problem string) {
	switch o.kind {
	case kindREAPIBlob:
		data, found, err := readREAPIBlob(k, n, o.namespace, digestOf(o.body))
		switch {
		case err != nil:
			return false, fmt.Sprintf("%s on %s: %v", o, n.Name, err)
		case !found:
			return false, ""
		case !bytes.Equal(data, o.body):
			return true, fmt.Sprintf("%s on %s: %d bytes differ from the %d written", o, n.Name, len(data), len(o.body))
		}
		return true, ""
	case kindREAPIAC:
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		got, err := repb.NewActionCacheClient(k.reapiConn(n)).GetActionResult(ctx, &repb.GetActionResultRequest{
			InstanceName: o.namespace, ActionDigest: &repb.Digest{Hash: o.id, SizeBytes: 142}, DigestFunction: repb.DigestFunction_SHA256,
		})
		if status.Code(err) == codes.NotFound {
			return false, ""
		}
		if err != nil {
			return false, fmt.Sprintf("%s: GetActionResult on %s: %v", o, n.Name, err)
		}
		files := got.GetOutputFiles()
		want := o.action.GetOutputFiles()[0]
		if len(files) != 1 || files[0].GetPath() != want.GetPath() || files[0].GetDigest().GetHash() != want.GetDigest().GetHash() || got.GetExitCode() != 0 {
			return true, fmt.Sprintf("%s on %s: action result %v, want output %v", o, n.Name, files, want)
		}
		data, found, err := readREAPIBlob(k, n, o.namespace, want.GetDigest())
		if err != nil || !found || !bytes.Equal(data, o.body) {
			return true, fmt.Sprintf("%s on %s: output blob found=%v err=%v (%d bytes, want %d)", o, n.Name, found, err, len(data), len(o.body))
		}
		return true, ""
	}
	got, err := tryDo(request{Method: http.MethodGet, URL: o.readURL(n)})
	if err != nil {
		return false, fmt.Sprintf("%s on %s: %v", o, n.Name, err)
	}
	switch got.Status {
	case http.StatusOK:
	case http.StatusNotFound:
		return false, ""
	default:
		return false, fmt.Sprintf("%s on %s: GET %s", o, n.Name, got)
	}
	if o.kind == kindKeyValue {
		values, err := documentValues(got.Body)
		if err != nil {
			return true, fmt.Sprintf("%s on %s: %v", o, n.Name, err)
		}
		if !slices.Equal(values, o.values) {
			return true, fmt.Sprintf("%s on %s: entries %s, want %s", o, n.Name, abbreviate(values), abbreviate(o.values))
		}
		return true, ""
	}
	if !bytes.Equal(got.Body, o.body) {
		return true, fmt.Sprintf("%s on %s: %d bytes (sha256 %x) differ from the %d written (sha256 %x)",
			o, n.Name, len(got.Body), sha256.Sum256(got.Body), len(o.body), sha256.Sum256(o.body))
	}
	return true, ""
}

func documentValues(doc []byte) ([]string, error) {
	var kv struct {
		Entries []struct {
			Value string `json:"value"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(doc, &kv); err != nil {
		return nil, fmt.Errorf("keyvalue document %q is not JSON: %w", abbreviate([]string{string(doc)}), err)
	}
	values := make([]string, len(kv.Entries))
	for i, e := range kv.Entries {
		values[i] = e.Value
	}
	return values, nil
}

func abbreviate(values []string) string {
	out := make([]string, len(values))
	for i, v := range values {
		if len(v) > 24 {
			v = v[:24] + "…"
		}
		out[i] = v
	}
	return "[" + strings.Join(out, " ") + "]"
}

// writeObjects writes objs with workers concurrent writers, object i on nodes[i%len(nodes)],
// and fails the test if any write fails. It returns how long the writes took.
func writeObjects(t testing.TB, k *clusterKit, objs []*clusterObject, workers int, nodes ...*Node) time.Duration {
	t.Helper()
	start := time.Now()
	var errs errorList
	forEach(len(objs), workers, func(i int) {
		if err := objs[i].write(k, nodes[i%len(nodes)]); err != nil {
			errs.add(err)
		}
	})
	errs.failIfAny(t, "writes")
	return time.Since(start).Round(time.Millisecond)
}

// readState is what reading a set of objects from one node found.
type readState struct {
	intact   int
	absent   []*clusterObject
	problems []string
}

func readObjects(k *clusterKit, objs []*clusterObject, n *Node, workers int) readState {
	var mu sync.Mutex
	var st readState
	forEach(len(objs), workers, func(i int) {
		found, problem := objs[i].read(k, n)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case problem != "":
			st.problems = append(st.problems, problem)
		case !found:
			st.absent = append(st.absent, objs[i])
		default:
			st.intact++
		}
	})
	return st
}

// expectIntact fails the test unless every object reads back intact from every node.
func expectIntact(t testing.TB, k *clusterKit, objs []*clusterObject, nodes ...*Node) {
	t.Helper()
	for _, n := range nodes {
		st := readObjects(k, objs, n, 8)
		if len(st.absent) > 0 || len(st.problems) > 0 {
			t.Fatalf("%s: %d of %d objects intact; %d absent %s; %d damaged %s",
				n.Name, st.intact, len(objs), len(st.absent), firstFew(objectNames(st.absent)), len(st.problems), firstFew(st.problems))
		}
	}
}

// expectAbsent fails the test unless every object answers "not found" on every node.
func expectAbsent(t testing.TB, k *clusterKit, objs []*clusterObject, nodes ...*Node) {
	t.Helper()
	for _, n := range nodes {
		st := readObjects(k, objs, n, 8)
		if st.intact > 0 || len(st.problems) > 0 {
			var present []string
			for _, o := range objs {
				if found, _ := o.read(k, n); found {
					present = append(present, o.String())
				}
			}
			t.Fatalf("%s: %d of %d objects should be gone but are served %s; problems %s",
				n.Name, st.intact, len(objs), firstFew(present), firstFew(st.problems))
		}
	}
}

// waitAbsent polls until every object answers "not found" on every node.
func waitAbsent(t testing.TB, k *clusterKit, timeout time.Duration, objs []*clusterObject, nodes ...*Node) time.Duration {
	t.Helper()
	start := time.Now()
	PollUntil(t, timeout, "every object gone on every node", func() (bool, string) {
		for _, n := range nodes {
			st := readObjects(k, objs, n, 8)
			if len(st.problems) > 0 {
				return false, fmt.Sprintf("%s: %s", n.Name, firstFew(st.problems))
			}
			if st.intact > 0 {
				return false, fmt.Sprintf("%s still serves %d of %d", n.Name, st.intact, len(objs))
			}
		}
		return true, ""
	})
	return time.Since(start).Round(time.Millisecond)
}

func objectNames(objs []*clusterObject) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.String()
	}
	return out
}
