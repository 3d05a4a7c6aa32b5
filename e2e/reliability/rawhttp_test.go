package reliability

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
)

// Raw HTTP/1.1 for hostile clients: Go's http.Client will not send a Content-Length that
// disagrees with its body, raw bytes in a request line, or a body that stalls mid-way, and it
// hides how much of a body the server took before answering.

// bodyFraming is how a raw request frames its body.
type bodyFraming int

const (
	// framingTrue declares the body's real length.
	framingTrue bodyFraming = iota
	// framingChunked declares no length (Transfer-Encoding: chunked).
	framingChunked
	// framingFalse declares a length shorter than the bytes that follow.
	framingFalse
)

func (f bodyFraming) String() string {
	return [...]string{"true Content-Length", "no Content-Length (chunked)", "false Content-Length (shorter than the body)"}[f]
}

// rawWriteChunk is what the raw client hands its socket per write; with a small send buffer
// it keeps what the kernel holds, and so the overcount of "bytes sent", small.
const rawWriteChunk = 16 << 10

// rawResult is what one raw request observed.
type rawResult struct {
	Status int   // of the first response; 0 when none was read
	Sent   int64 // body bytes the client's socket accepted before the answer or a reset
	Err    error // the read side's error when no response was read
}

// sendRaw sends one request with a body of bodyLen bytes (declared as framing says; declared
// is the Content-Length of framingFalse) and stops sending as soon as the server answers or
// resets the connection. headers are "Name: value" lines. It never fails the test itself (it
// runs on many goroutines at once): a connection that could not be made is in Err.
func sendRaw(addr, method, target string, headers []string, framing bodyFraming, bodyLen, declared int64) rawResult {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return rawResult{Err: fmt.Errorf("dial %s: %w", addr, err)}
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetWriteBuffer(rawWriteChunk)
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))

	var head strings.Builder
	fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, addr)
	for _, h := range headers {
		head.WriteString(h + "\r\n")
	}
	switch framing {
	case framingTrue:
		fmt.Fprintf(&head, "Content-Length: %d\r\n", bodyLen)
	case framingChunked:
		head.WriteString("Transfer-Encoding: chunked\r\n")
	case framingFalse:
		fmt.Fprintf(&head, "Content-Length: %d\r\n", declared)
	}
	head.WriteString("\r\n")

	var answered atomic.Bool
	got := make(chan rawResult, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		answered.Store(true)
		if err != nil {
			got <- rawResult{Err: err}
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		got <- rawResult{Status: resp.StatusCode}
	}()

	if _, err := io.WriteString(conn, head.String()); err != nil {
		conn.Close() // ends the reader
		<-got
		return rawResult{Err: fmt.Errorf("send the request head: %w", err)}
	}
	var sent int64
	buf := make([]byte, rawWriteChunk)
	for i := range buf {
		buf[i] = 'k' // printable, so a body misread as a request line is a malformed request
	}
	for sent < bodyLen && !answered.Load() {
		n := min(int64(len(buf)), bodyLen-sent)
		var err error
		if framing == framingChunked {
			_, err = fmt.Fprintf(conn, "%x\r\n%s\r\n", n, buf[:n])
		} else {
			_, err = conn.Write(buf[:n])
		}
		if err != nil {
			break // reset by the server: it stopped reading
		}
		sent += n
	}
	if framing == framingChunked && sent == bodyLen && !answered.Load() {
		_, _ = io.WriteString(conn, "0\r\n\r\n")
	}
	res := <-got
	res.Sent = sent
	return res
}

// serverRead measures the bytes the node read while fn ran: rchar of its process, once it
// has stopped moving (the server may still drain a socket after answering).
func serverRead(t testing.TB, node *harness.Node, fn func()) int64 {
	t.Helper()
	before := settledReadBytes(t, node)
	fn()
	return settledReadBytes(t, node) - before
}

func settledReadBytes(t testing.TB, node *harness.Node) int64 {
	t.Helper()
	last := int64(-1)
	var v int64
	harness.PollUntil(t, 10*time.Second, node.Name+"'s read counter to settle", func() (bool, string) {
		var err error
		v, err = node.ReadBytes()
		if err != nil {
			return false, err.Error()
		}
		settled := v == last
		last = v
		return settled, fmt.Sprintf("rchar %d", v)
	})
	return v
}
