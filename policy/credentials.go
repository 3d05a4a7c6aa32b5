package policy

import (
	"encoding/base64"
	"strings"
)

// Credential schemes of Credentials.Scheme.
const (
	SchemeBearer = "bearer"
	SchemeBasic  = "basic"
	SchemeAPIKey = "api_key"
)

// Credentials is the caller's credential as parsed from the Authorization header (Bearer or
// Basic, the form Nx, Bazel's --remote_header and Gradle send) or, when that is absent, from
// X-Api-Key. Scripts see it as ctx.credentials, so none of them has to parse base64 or
// scheme prefixes in Lua; the raw headers stay available in ctx.headers.
type Credentials struct {
	// Scheme is SchemeBearer, SchemeBasic, SchemeAPIKey, another scheme's lower-cased name,
	// or "" when the request carries no credential.
	Scheme string
	// Token is the bearer token, the API key, or another scheme's raw parameters.
	Token string
	// Username and Password are set for SchemeBasic.
	Username, Password string
	// Error says why a credential that is present could not be parsed ("" when it could).
	Error string
}

// ParseCredentials parses an Authorization header value and an X-Api-Key value.
func ParseCredentials(authorization, apiKey string) Credentials {
	authorization = strings.TrimSpace(authorization)
	if authorization == "" {
		if key := strings.TrimSpace(apiKey); key != "" {
			return Credentials{Scheme: SchemeAPIKey, Token: key}
		}
		return Credentials{}
	}
	scheme, rest := authorization, ""
	if i := strings.IndexAny(authorization, " \t"); i >= 0 {
		scheme, rest = authorization[:i], strings.TrimSpace(authorization[i+1:])
	}
	switch strings.ToLower(scheme) {
	case SchemeBearer:
		if rest == "" {
			return Credentials{Scheme: SchemeBearer, Error: "empty bearer token"}
		}
		return Credentials{Scheme: SchemeBearer, Token: rest}
	case SchemeBasic:
		return parseBasic(rest)
	default:
		return Credentials{Scheme: strings.ToLower(scheme), Token: rest}
	}
}

// parseBasic decodes RFC 7617 credentials. Padding is optional because some clients drop it.
func parseBasic(encoded string) Credentials {
	c := Credentials{Scheme: SchemeBasic}
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		raw, err = base64.RawStdEncoding.DecodeString(encoded)
	}
	if err != nil {
		c.Error = "basic credentials are not base64"
		return c
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		c.Error = "basic credentials have no ':' between user and password"
		return c
	}
	c.Username, c.Password = user, pass
	return c
}
