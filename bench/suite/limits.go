package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"time"
)

// measureLimits measures this machine's ceilings, each for about d: what a cache could reach
// at best, so every row can be read as a fraction of it. dir must be on the filesystem the
// servers' data directories use.
func measureLimits(dir string, d time.Duration) (Limits, error) {
	l := Limits{FilesystemOfData: dir, LogicalCPUs: runtime.NumCPU(), MeasuredFor: d.String(),
		LoadGeneratorNote: "client and server share these CPUs"}
	l.SHA256GBps = sha256Rate(d)
	var err error
	if l.FdatasyncP50Ms, l.FdatasyncP99Ms, err = fdatasyncLatency(dir, d); err != nil {
		return l, fmt.Errorf("fdatasync latency: %w", err)
	}
	if l.AppendsPerS, err = groupAppends(dir, d); err != nil {
		return l, fmt.Errorf("grouped appends: %w", err)
	}
	if l.LoopbackGiBps, err = loopbackRate(d); err != nil {
		return l, fmt.Errorf("loopback TCP: %w", err)
	}
	return l, nil
}

// sha256Rate hashes a 1 MiB buffer on one goroutine (one core) for d: GB/s.
func sha256Rate(d time.Duration) float64 {
	buf := make([]byte, 1<<20)
	h := sha256.New()
	var n int64
	start := time.Now()
	for time.Since(start) < d {
		h.Write(buf)
		n += int64(len(buf))
	}
	_ = h.Sum(nil)
	return float64(n) / time.Since(start).Seconds() / 1e9
}

// fdatasyncLatency overwrites 4 KiB and fdatasyncs, again and again for d (at least 20 times):
// p50 and p99 in ms. That is the floor of one durable write's latency.
func fdatasyncLatency(dir string, d time.Duration) (p50, p99 float64, err error) {
	f, err := os.CreateTemp(dir, "fdatasync-*")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	var lat []time.Duration
	start := time.Now()
	for len(lat) < 20 || time.Since(start) < d {
		buf[0]++
		t0 := time.Now()
		if _, err := f.WriteAt(buf, 0); err != nil {
			return 0, 0, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return ms(lat[len(lat)/2]), ms(lat[min(len(lat)-1, len(lat)*99/100)]), nil
}

// groupAppends appends 1 KiB records to one file with one fdatasync per 64 records for d:
// records/s. That is what one group commit of a log-structured store could reach for small
// durable writes.
func groupAppends(dir string, d time.Duration) (float64, error) {
	f, err := os.OpenFile(filepath.Join(dir, "appends"), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	rec := make([]byte, 1024)
	var n int64
	start := time.Now()
	for n < 64 || time.Since(start) < d {
		for range 64 {
			rec[0]++
			if _, err := f.Write(rec); err != nil {
				return 0, err
			}
			n++
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// loopbackRate sends 1 MiB writes over one loopback TCP connection for d: GiB/s.
func loopbackRate(d time.Duration) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	received := make(chan int64, 1)
	go func() { // owned: ends when the sender closes the connection (or Accept fails on Close)
		c, err := ln.Accept()
		if err != nil {
			received <- 0
			return
		}
		defer c.Close()
		n, _ := io.CopyBuffer(io.Discard, c, make([]byte, 1<<20))
		received <- n
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return 0, err
		}
	}
	c.Close()
	n := <-received
	return float64(n) / time.Since(start).Seconds() / (1 << 30), nil
}
