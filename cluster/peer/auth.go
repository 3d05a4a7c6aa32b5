package peer

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/internal/ratelimit"
	"github.com/kuracache/kura/internal/telemetry"
)

// The internal plane's credential. With a gossip key configured, every call carries
//
//	x-kura-internal-auth: v1:<unix-millis>:<base64url, unpadded, of HMAC-SHA256(k, "<full method>\n<unix-millis>")>
//
// where k = HKDF-SHA256(gossip key, no salt, info planeKeyInfo). Deriving k keeps the AES key
// memberlist encrypts with from ever being used as an HMAC key too, and the info string
// versions the scheme. Binding the full method means a credential captured on a listing
// cannot be replayed as a push; the timestamp bounds replay to the skew window.
const (
	credentialHeader  = "x-kura-internal-auth" // gRPC metadata keys are lower case
	credentialVersion = "v1"
	planeKeyInfo      = "kura internal plane v1"
	// maxCredentialBytes bounds what the parser looks at: "v1:" + 19 digits + ":" + 43.
	maxCredentialBytes = 128
	// maxMillisDigits is the number of digits of the largest int64.
	maxMillisDigits = 19
)

// DefaultCredentialSkew is how far a credential's timestamp may be from the checking node's
// clock, either way. A credential seen on the wire can be replayed for the same method within
// the window, so it stays short; it is still far wider than the milliseconds NTP keeps nodes
// apart, and covers a node whose clock sync lags plus the time a call spends between being
// signed and arriving (connecting, at most DialTimeout, and waiting for a stream slot).
const DefaultCredentialSkew = 2 * time.Minute

// refusalLogInterval is how often at most the server logs a refusal of one reason: a scanner
// knocking on the port gets one WARN line per reason and interval, with the count of those
// it suppressed, while the metric counts every one.
const refusalLogInterval = 30 * time.Second

// Reasons of kura_internal_auth_refusals_total.
const (
	refusalMissing   = "missing"        // no credential: an open client, a scanner, a node without KURA_GOSSIP_KEY
	refusalMalformed = "malformed"      // not a v1 credential
	refusalBad       = "bad_credential" // well formed, wrong key: KURA_GOSSIP_KEY differs
	refusalSkew      = "skew"           // right key, timestamp outside the window: a clock is off
)

var refusalReasons = []string{refusalMissing, refusalMalformed, refusalBad, refusalSkew}

// derivePlaneKey derives the HMAC key from the gossip key. It cannot fail for the 16, 24 or
// 32-byte keys the configuration accepts, so a failure is a programming error.
func derivePlaneKey(gossipKey []byte) []byte {
	k, err := hkdf.Key(sha256.New, gossipKey, nil, planeKeyInfo, sha256.Size)
	if err != nil {
		panic(fmt.Sprintf("derive the internal plane's key: %v", err))
	}
	return k
}

// credential is a parsed credential header.
type credential struct {
	millis int64 // the signer's clock, Unix milliseconds
	mac    [sha256.Size]byte
}

// planeMAC computes credential MACs under the key derived from one gossip key. Keyed HMAC
// states (and their scratch buffers) are pooled and Reset between uses: a new one per call
// costs the key schedule and a dozen allocations on every internal-plane call of both
// ends. It is safe for concurrent use.
type planeMAC struct{ pool sync.Pool }

type macState struct {
	h   hash.Hash
	buf []byte // "<method>\n<millis>" then the MAC
}

func newPlaneMAC(gossipKey []byte) *planeMAC {
	key := derivePlaneKey(gossipKey)
	return &planeMAC{pool: sync.Pool{New: func() any {
		return &macState{h: hmac.New(sha256.New, key), buf: make([]byte, 0, 128)}
	}}}
}

// sum is HMAC-SHA256(k, "<method>\n<millis>").
func (p *planeMAC) sum(method string, millis int64) [sha256.Size]byte {
	st := p.pool.Get().(*macState)
	msg := append(st.buf[:0], method...)
	msg = append(msg, '\n')
	msg = strconv.AppendInt(msg, millis, 10)
	st.h.Reset()
	st.h.Write(msg)
	b := st.h.Sum(msg) // the MAC lands after the message, in the same buffer
	var out [sha256.Size]byte
	copy(out[:], b[len(msg):])
	st.buf = b[:0]
	p.pool.Put(st)
	return out
}

// format is the header value for a call of method signed at millis.
func (p *planeMAC) format(method string, millis int64) string {
	mac := p.sum(method, millis)
	var buf [maxCredentialBytes]byte
	b := append(buf[:0], credentialVersion+":"...)
	b = strconv.AppendInt(b, millis, 10)
	b = append(b, ':')
	b = base64.RawURLEncoding.AppendEncode(b, mac[:])
	return string(b)
}

// strictBase64 is the MAC's encoding, refusing non-zero padding bits so that one MAC has one
// spelling.
var strictBase64 = base64.RawURLEncoding.Strict()

// parseCredential decodes a header value. It accepts only the canonical form
// planeMAC.format produces (decimal without sign or leading zeros, unpadded base64url of
// exactly 32 bytes), so one credential has one spelling.
func parseCredential(s string) (credential, error) {
	var c credential
	if len(s) > maxCredentialBytes {
		return c, fmt.Errorf("%d bytes, at most %d", len(s), maxCredentialBytes)
	}
	version, rest, ok := strings.Cut(s, ":")
	if !ok || version != credentialVersion {
		return c, errors.New("not a v1 credential")
	}
	ts, mac, ok := strings.Cut(rest, ":")
	if !ok {
		return c, errors.New("no MAC")
	}
	if ts == "" || len(ts) > maxMillisDigits || (ts[0] == '0' && len(ts) > 1) || strings.Trim(ts, "0123456789") != "" {
		return c, errors.New("timestamp is not canonical decimal milliseconds")
	}
	millis, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return c, errors.New("timestamp out of range")
	}
	if base64.RawURLEncoding.EncodedLen(sha256.Size) != len(mac) {
		return c, errors.New("MAC is not 32 bytes of unpadded base64url")
	}
	if n, err := strictBase64.Decode(c.mac[:], []byte(mac)); err != nil || n != sha256.Size {
		return credential{}, errors.New("MAC is not 32 bytes of unpadded base64url")
	}
	c.millis = millis
	return c, nil
}

// signer attaches credentials to outgoing calls.
type signer struct {
	mac *planeMAC
	now func() time.Time
}

// newSigner signs with the key derived from gossipKey, reading the time from now (nil:
// time.Now).
func newSigner(gossipKey []byte, now func() time.Time) signer {
	if now == nil {
		now = time.Now
	}
	return signer{mac: newPlaneMAC(gossipKey), now: now}
}

func (s signer) attach(ctx context.Context, method string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, credentialHeader, s.mac.format(method, s.now().UnixMilli()))
}

func (s signer) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(s.attach(ctx, method), method, req, reply, cc, opts...)
}

func (s signer) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(s.attach(ctx, method), desc, cc, method, opts...)
}

// CredentialInterceptors returns client interceptors that attach the credential derived
// from gossipKey (KURA_GOSSIP_KEY, decoded; not empty) to every call, for tools and tests
// that dial a node's internal plane on a grpc.ClientConn of their own. The Client installs
// them itself (ClientConfig.PlaneKey). A node without a gossip key checks no credential:
// dial it without them.
func CredentialInterceptors(gossipKey []byte) (grpc.UnaryClientInterceptor, grpc.StreamClientInterceptor) {
	s := newSigner(gossipKey, nil)
	return s.unary, s.stream
}

// checker verifies the credential of every incoming call before its handler runs, so a
// refused push never reaches the store.
type checker struct {
	mac      *planeMAC
	skew     time.Duration
	now      func() time.Time
	refusals *prometheus.CounterVec // reason
	log      *slog.Logger
	limit    *ratelimit.PerKey // refusal log lines, per reason
}

func newChecker(cfg ServerConfig, log *slog.Logger, now func() time.Time) (*checker, error) {
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	refusals, err := telemetry.RegisterOrReuse(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kura_internal_auth_refusals_total",
		Help: "Internal-plane calls refused for their credential, by reason (missing, malformed, bad_credential, skew).",
	}, []string{"reason"}))
	if err != nil {
		return nil, err
	}
	for _, r := range refusalReasons {
		refusals.WithLabelValues(r) // exported at zero, so a dashboard sees the check is on
	}
	c := &checker{mac: newPlaneMAC(cfg.PlaneKey), skew: cfg.CredentialSkew, now: now, refusals: refusals,
		log: log, limit: ratelimit.NewPerKey(refusalLogInterval, now)}
	if c.skew <= 0 {
		c.skew = DefaultCredentialSkew
	}
	return c, nil
}

func (c *checker) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := c.verify(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (c *checker) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := c.verify(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// verify returns nil for a valid credential, else the UNAUTHENTICATED status to answer with.
func (c *checker) verify(ctx context.Context, method string) error {
	reason, msg := c.refuse(ctx, method)
	if reason == "" {
		return nil
	}
	c.refusals.WithLabelValues(reason).Inc()
	c.logRefusal(ctx, reason, method, msg)
	return status.Error(codes.Unauthenticated, "internal plane: "+msg)
}

// refuse returns why the call's credential is not accepted ("" when it is) and the message
// for the caller. The MAC is checked before the timestamp, so a skew refusal always comes
// from a node holding the key: then it is worth telling by how much its clock is off.
func (c *checker) refuse(ctx context.Context, method string) (reason, msg string) {
	values := metadata.ValueFromIncomingContext(ctx, credentialHeader) // copies only this key's values
	switch len(values) {
	case 0:
		return refusalMissing, "missing credential (the calling node needs the same KURA_GOSSIP_KEY)"
	case 1:
	default:
		return refusalMalformed, fmt.Sprintf("malformed credential: %d values of %s", len(values), credentialHeader)
	}
	cred, err := parseCredential(values[0])
	if err != nil {
		return refusalMalformed, "malformed credential: " + err.Error()
	}
	want := c.mac.sum(method, cred.millis)
	if !hmac.Equal(want[:], cred.mac[:]) {
		return refusalBad, "bad credential (KURA_GOSSIP_KEY differs between the nodes)"
	}
	offset := time.UnixMilli(cred.millis).Sub(c.now())
	if offset > c.skew || offset < -c.skew {
		side := "ahead of"
		if offset < 0 {
			side = "behind"
		}
		return refusalSkew, fmt.Sprintf("timestamp outside the allowed skew: the caller's clock is %s %s this node's, at most %s allowed",
			offset.Abs().Round(time.Millisecond), side, c.skew)
	}
	return "", ""
}

// logRefusal writes at most one WARN line per reason and refusalLogInterval.
func (c *checker) logRefusal(ctx context.Context, reason, method, msg string) {
	ok, suppressed := c.limit.AllowCounted(reason)
	if !ok {
		return
	}
	remote := "unknown"
	if p, ok := grpcpeer.FromContext(ctx); ok && p.Addr != nil {
		remote = p.Addr.String()
	}
	c.log.Warn("internal plane: refused a call without a valid credential",
		"reason", reason, "remote", remote, "method", methodName(method), "detail", msg,
		"suppressed_since_last", suppressed, "log_interval", c.limit.Window())
}
