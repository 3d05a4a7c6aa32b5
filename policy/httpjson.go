package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// HTTPClient configures kura.http_json(<id>, request).
type HTTPClient struct {
	BaseURL        string // absolute http(s) URL; request paths are appended
	ConnectTimeout time.Duration
	RequestTimeout time.Duration
}

// maxHTTPJSONResponseBytes caps a response body read for a script: an authorisation service
// answers in bytes, and a misbehaving one must not fill the node's memory.
const maxHTTPJSONResponseBytes = 1 << 20

type httpJSONClient struct {
	id      string
	base    *url.URL
	timeout time.Duration
	client  *http.Client
	metrics *metrics
}

func newHTTPJSONClient(id string, cfg HTTPClient, m *metrics) (*httpJSONClient, error) {
	base, err := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("HTTP client %s: base URL %q is not an absolute http(s) URL", id, cfg.BaseURL)
	}
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.RequestTimeout,
	}
	return &httpJSONClient{
		id:      id,
		base:    base,
		timeout: cfg.RequestTimeout,
		client: &http.Client{
			Transport: transport,
			// A redirect could send the script's credentials to another host; the
			// script sees the 3xx and decides.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		metrics: m,
	}, nil
}

// httpJSONRequest is a script's request table, validated.
type httpJSONRequest struct {
	method  string
	path    string
	headers map[string]string
	query   map[string]string
	body    any // JSON-encoded when not nil
	hasBody bool
}

func parseHTTPJSONRequest(raw any) (httpJSONRequest, error) {
	m, ok := raw.(map[string]any)
	if !ok {
		return httpJSONRequest{}, errors.New("the request must be a table {method, path, headers, query, body}")
	}
	r := httpJSONRequest{method: http.MethodGet}
	if v, ok := m["method"]; ok {
		s, ok := v.(string)
		if !ok || s == "" || strings.ContainsAny(s, " \r\n") {
			return r, fmt.Errorf("method must be an HTTP method, got %s", describe(v))
		}
		r.method = strings.ToUpper(s)
	}
	p, ok := m["path"].(string)
	if !ok || !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") {
		return r, fmt.Errorf("path must be a string starting with a single /, got %s", describe(m["path"]))
	}
	if p == "/.." || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
		return r, errors.New("path must not climb out of the client's base URL (no .. segments)")
	}
	if strings.ContainsAny(p, "?#") {
		return r, errors.New("path must not hold a query or fragment: put parameters in request.query")
	}
	r.path = p
	var err error
	if r.headers, err = stringMap(m["headers"], "headers"); err != nil {
		return r, err
	}
	if r.query, err = stringMap(m["query"], "query"); err != nil {
		return r, err
	}
	r.body, r.hasBody = m["body"]
	return r, nil
}

func stringMap(v any, what string) (map[string]string, error) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s must be a table of name = value", what)
	}
	out := make(map[string]string, len(m))
	for k, raw := range m {
		s, err := headerValue(raw)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %v", what, k, err)
		}
		out[k] = s
	}
	return out, nil
}

// do sends the request within min(ctx's deadline, the client's request timeout) and returns
// {status, headers, body, text}: body is the decoded JSON (nil when the body is empty or not
// JSON), text the raw body.
func (c *httpJSONClient) do(ctx context.Context, r httpJSONRequest) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := *c.base
	u.Path = c.base.Path + r.path
	if len(r.query) > 0 {
		q := url.Values{}
		for k, v := range r.query {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
	}
	var body io.Reader
	if r.hasBody {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("encode the body: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("build the request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range r.headers {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := c.client.Do(req)
	if err != nil {
		c.metrics.observeHTTPClient(c.id, "error", time.Since(start))
		return nil, fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPJSONResponseBytes+1))
	if err != nil {
		c.metrics.observeHTTPClient(c.id, "error", time.Since(start))
		return nil, fmt.Errorf("%s %s: read the response: %w", r.method, r.path, err)
	}
	if len(raw) > maxHTTPJSONResponseBytes {
		c.metrics.observeHTTPClient(c.id, "error", time.Since(start))
		return nil, fmt.Errorf("%s %s: response body longer than %d bytes", r.method, r.path, maxHTTPJSONResponseBytes)
	}
	c.metrics.observeHTTPClient(c.id, fmt.Sprintf("%dxx", resp.StatusCode/100), time.Since(start))
	headers := make(map[string]any, len(resp.Header))
	for k, v := range resp.Header {
		headers[strings.ToLower(k)] = strings.Join(v, ", ")
	}
	out := map[string]any{"status": float64(resp.StatusCode), "headers": headers, "text": string(raw)}
	var decoded any
	if len(bytes.TrimSpace(raw)) > 0 && json.Unmarshal(raw, &decoded) == nil {
		out["body"] = decoded
	}
	return out, nil
}
