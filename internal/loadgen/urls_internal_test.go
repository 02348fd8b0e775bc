package loadgen

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// A load step given two URLs sends to both: its connections alternate
// between them, so each server gets about half of the requests.
func TestLoadSpreadsConnectionsOverURLs(t *testing.T) {
	var hits [2]atomic.Int64
	var srv [2]*httptest.Server
	for i := range srv {
		srv[i] = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			io.WriteString(w, "ok")
		}))
		defer srv[i].Close()
	}
	b := &bench{o: BenchOptions{URL: srv[0].URL, URLs: []string{srv[0].URL, srv[1].URL}, Duration: 200 * time.Millisecond}}
	req := NewRequest(srv[0].URL, "GET", "/x", nil)
	f, err := b.load(context.Background(), 4, func(c *Conn, _ int) error {
		_, _, err := c.Do(req)
		return err
	})
	if err != nil || f.failed != 0 {
		t.Fatalf("load: %v, %d failed (%v)", err, f.failed, f.firstErr)
	}
	a, c := hits[0].Load(), hits[1].Load()
	if a == 0 || c == 0 || a+c != int64(f.ok) {
		t.Fatalf("requests per server %d and %d, %d answered", a, c, f.ok)
	}
}
