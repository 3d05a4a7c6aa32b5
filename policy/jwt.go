package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// JWTVerifier configures kura.jwt_verify(<id>, token).
type JWTVerifier struct {
	// Algorithms accepted in the token header: HS256/HS384/HS512 with Secret, or
	// RS256/RS384/RS512/ES256/ES384/ES512 with JWKSURL.
	Algorithms []string
	Secret     []byte
	// JWKSURL serves the public keys (a CI system's OIDC issuer, say). Keys are cached,
	// refreshed every JWKSRefresh, and a token with an unknown kid triggers at most one
	// extra fetch a minute.
	JWKSURL     string
	JWKSRefresh time.Duration
	Issuer      string   // empty: iss not checked
	Audiences   []string // empty: aud not checked; else any of them
}

// Verification rules shared by every verifier.
const (
	// jwtLeeway absorbs clock skew between the token issuer and this node for exp and nbf.
	jwtLeeway = 30 * time.Second
	// maxTokenBytes refuses absurd tokens before any parsing.
	maxTokenBytes = 16 << 10
	// DefaultJWKSRefresh is how often JWKS keys are re-fetched: a key rotated out stops
	// verifying within this long.
	DefaultJWKSRefresh = 5 * time.Minute
	// unknownKIDRefetch bounds the fetches a stream of tokens with random kids can cause.
	unknownKIDRefetch = time.Minute
	jwksHTTPTimeout   = 5 * time.Second
)

var hmacAlgorithms = map[string]bool{"HS256": true, "HS384": true, "HS512": true}
var publicKeyAlgorithms = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true, "ES256": true, "ES384": true, "ES512": true,
}

type jwtVerifier struct {
	parser  *jwt.Parser
	keyFunc func(ctx context.Context) jwt.Keyfunc
}

// newJWTVerifier checks cfg and, for a JWKS verifier, starts its refresh goroutine, which
// stops when ctx is cancelled.
func newJWTVerifier(ctx context.Context, id string, cfg JWTVerifier, logger *slog.Logger, m *metrics) (*jwtVerifier, error) {
	if len(cfg.Algorithms) == 0 {
		return nil, fmt.Errorf("JWT verifier %s: no algorithm", id)
	}
	hmacCount := 0
	for _, a := range cfg.Algorithms {
		switch {
		case hmacAlgorithms[a]:
			hmacCount++
		case publicKeyAlgorithms[a]:
		default:
			return nil, fmt.Errorf("JWT verifier %s: unsupported algorithm %q", id, a)
		}
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(cfg.Algorithms),
		jwt.WithLeeway(jwtLeeway),
		jwt.WithExpirationRequired(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if len(cfg.Audiences) > 0 {
		opts = append(opts, jwt.WithAudience(cfg.Audiences...))
	}
	v := &jwtVerifier{parser: jwt.NewParser(opts...)}
	switch {
	case hmacCount == len(cfg.Algorithms):
		if len(cfg.Secret) == 0 {
			return nil, fmt.Errorf("JWT verifier %s: %s needs a secret", id, strings.Join(cfg.Algorithms, ","))
		}
		secret := cfg.Secret
		v.keyFunc = func(context.Context) jwt.Keyfunc {
			return func(*jwt.Token) (any, error) { return secret, nil }
		}
	case hmacCount == 0:
		if cfg.JWKSURL == "" {
			return nil, fmt.Errorf("JWT verifier %s: %s needs a JWKS URL", id, strings.Join(cfg.Algorithms, ","))
		}
		refresh := cfg.JWKSRefresh
		if refresh <= 0 {
			refresh = DefaultJWKSRefresh
		}
		noErrorOnFirstFetch := true // the issuer may be down at startup; keys arrive later
		kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
			Client:                    &http.Client{Timeout: jwksHTTPTimeout},
			HTTPTimeout:               jwksHTTPTimeout,
			NoErrorReturnFirstHTTPReq: &noErrorOnFirstFetch,
			RefreshInterval:           refresh,
			RefreshUnknownKID:         rate.NewLimiter(rate.Every(unknownKIDRefetch), 1),
			// A hook must not wait a minute for the limiter: an unknown kid past the
			// limit fails at once.
			RateLimitWaitMax: time.Millisecond,
			RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
				return func(ctx context.Context, err error) {
					if ctx.Err() != nil {
						return // shutting down
					}
					m.jwksRefreshErrors.WithLabelValues(id).Inc()
					logger.Warn("refresh JWKS keys", "verifier", id, "url", u, "err", err)
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("JWT verifier %s: JWKS %s: %w", id, cfg.JWKSURL, err)
		}
		v.keyFunc = kf.KeyfuncCtx
	default:
		return nil, fmt.Errorf("JWT verifier %s: HMAC and public-key algorithms cannot be mixed", id)
	}
	return v, nil
}

var errTokenTooLong = errors.New("token longer than 16 KiB")

// verify checks the signature, exp (required), nbf, iss and aud and returns the claims.
func (v *jwtVerifier) verify(ctx context.Context, token string) (map[string]any, error) {
	if len(token) > maxTokenBytes {
		return nil, errTokenTooLong
	}
	claims := jwt.MapClaims{}
	if _, err := v.parser.ParseWithClaims(token, claims, v.keyFunc(ctx)); err != nil {
		return nil, err
	}
	return claims, nil
}
