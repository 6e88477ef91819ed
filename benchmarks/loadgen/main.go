// Command loadgen is the open-loop load generator of benchmarks/instant_orders.py, which
// builds and runs it: requests go out on a fixed schedule (request i at i/rate seconds after
// the start), each on one of a fixed number of keep-alive HTTP/1.1 connections, and a
// request's latency counts from its scheduled time, so a server that falls behind cannot
// hide it (no coordinated omission).
//
// Written in Go, not Python, so that on a machine it shares with the stack it measures it
// costs little CPU and does not fall behind its own schedule: the Python generator's event
// loop, running tens of thousands of requests a minute, woke up to 0.8 s late under
// overload (docs/benchmarks.md, "The load generator's own lateness").
//
// It reads its settings as one JSON object on stdin (the credentials stay off the command
// line), and prints one line per request when all are answered:
//
//	index  woke_us  written_us  answered_us  answer
//
// in microseconds from the start: when it got round to the request (late if it fell
// behind), when it wrote it (later still if every connection was busy, or while one was
// being dialled), when the answer was read; the answer is the body's data.status on a 200,
// "HTTP <code>" otherwise, or "error" when no answer came (a connection refused or closed,
// an answer it cannot read, none within a minute).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type settings struct {
	Addr        string              `json:"addr"`
	Path        string              `json:"path"`
	Rate        float64             `json:"rate"`
	Count       int                 `json:"count"`
	Connections int                 `json:"connections"`
	Body        string              `json:"body"`
	Headers     []map[string]string `json:"headers"` // request i sends set i % len
	StartUnixNs int64               `json:"start_unix_ns"`
}

type outcome struct {
	woke, written, answered time.Duration
	answer                  string
}

// conn is one keep-alive connection, dialled when first used and again after a failure.
type conn struct {
	addr string
	c    net.Conn
	r    *bufio.Reader
}

func (k *conn) close() {
	if k.c != nil {
		k.c.Close()
		k.c = nil
	}
}

// answerTimeout bounds one request, so that a server that takes a connection and never
// answers ends the run instead of hanging it: the request counts as "error".
const answerTimeout = 60 * time.Second

// dial connects, unless connected already.
func (k *conn) dial() error {
	if k.c != nil {
		return nil
	}
	c, err := net.Dial("tcp", k.addr)
	if err != nil {
		return err
	}
	k.c, k.r = c, bufio.NewReaderSize(c, 16<<10)
	return nil
}

// post writes one request on the dialled connection and reads its answer: the status code
// and the body (Content-Length only; anything else fails, and the connection is closed).
func (k *conn) post(request []byte) (int, []byte, error) {
	if err := k.c.SetDeadline(time.Now().Add(answerTimeout)); err != nil {
		return 0, nil, err
	}
	if _, err := k.c.Write(request); err != nil {
		return 0, nil, err
	}
	line, err := k.r.ReadSlice('\n')
	if err != nil {
		return 0, nil, err
	}
	fields := bytes.Fields(line)
	if len(fields) < 2 {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		return 0, nil, err
	}
	length, closing := -1, bytes.HasPrefix(line, []byte("HTTP/1.0"))
	for {
		line, err := k.r.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		header := strings.TrimSpace(string(line))
		if header == "" {
			break
		}
		name, value, _ := strings.Cut(header, ":")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			if length, err = strconv.Atoi(strings.TrimSpace(value)); err != nil || length < 0 {
				return 0, nil, fmt.Errorf("bad content-length %q", value)
			}
		case "transfer-encoding":
			return 0, nil, fmt.Errorf("transfer-encoding %q is not read here", value)
		case "connection":
			closing = strings.Contains(strings.ToLower(value), "close")
		}
	}
	if length < 0 {
		return 0, nil, fmt.Errorf("an answer without content-length")
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(k.r, body); err != nil {
		return 0, nil, err
	}
	if closing {
		k.close()
	}
	return status, body, nil
}

// answer sends one request on the dialled connection and says what came back; a connection
// that failed is closed, to be dialled again by the next request on it.
func (k *conn) answer(request []byte) string {
	status, body, err := k.post(request)
	if err != nil {
		k.close()
		return "error"
	}
	return answerOf(status, body)
}

func answerOf(status int, body []byte) string {
	if status != 200 {
		return "HTTP " + strconv.Itoa(status)
	}
	var parsed struct {
		Data struct {
			Status string `json:"status"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &parsed) != nil || parsed.Data.Status == "" {
		return "HTTP 200 without data.status"
	}
	return parsed.Data.Status
}

func main() {
	var s settings
	if err := json.NewDecoder(os.Stdin).Decode(&s); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: settings on stdin:", err)
		os.Exit(2)
	}
	if s.Rate <= 0 || s.Count < 0 || s.Connections < 1 || len(s.Headers) == 0 {
		fmt.Fprintln(os.Stderr, "loadgen: rate > 0, count >= 0, connections >= 1 and a headers set are needed")
		os.Exit(2)
	}
	host, _, _ := net.SplitHostPort(s.Addr)
	requests := make([][]byte, len(s.Headers))
	for n, set := range s.Headers {
		var head strings.Builder
		fmt.Fprintf(&head, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Content-Length: %d\r\n", s.Path, host, len(s.Body))
		for k, v := range set {
			fmt.Fprintf(&head, "%s: %s\r\n", k, v)
		}
		requests[n] = append([]byte(head.String()+"\r\n"), s.Body...)
	}
	pool := make(chan *conn, s.Connections)
	for n := 0; n < s.Connections; n++ {
		pool <- &conn{addr: s.Addr}
	}
	outcomes := make([]outcome, s.Count)
	var wg sync.WaitGroup
	// The start is the moment asked for, on this process's monotonic clock, even if that
	// moment has passed (the process came up late): the requests are then late by it.
	start := time.Now()
	if s.StartUnixNs > 0 {
		start = start.Add(time.Until(time.Unix(0, s.StartUnixNs)))
		time.Sleep(time.Until(start))
	}
	for i := 0; i < s.Count; i++ {
		due := time.Duration(float64(i) * float64(time.Second) / s.Rate)
		if wait := due - time.Since(start); wait > 0 {
			time.Sleep(wait)
		}
		woke := time.Since(start)
		wg.Add(1)
		go func(i int, woke time.Duration) {
			defer wg.Done()
			k := <-pool
			err := k.dial()
			written, answer := time.Since(start), "error" // after the connect: not the server's
			if err == nil {
				answer = k.answer(requests[i%len(requests)])
			}
			outcomes[i] = outcome{woke, written, time.Since(start), answer}
			pool <- k
		}(i, woke)
	}
	wg.Wait()
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	for i, o := range outcomes {
		fmt.Fprintf(out, "%d\t%d\t%d\t%d\t%s\n", i, o.woke.Microseconds(), o.written.Microseconds(),
			o.answered.Microseconds(), o.answer)
	}
	out.Flush()
}
