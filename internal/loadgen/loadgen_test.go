package loadgen

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestConn(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/big": // chunked: more than net/http buffers before writing headers
			w.WriteHeader(201)
			w.Write(bytes.Repeat([]byte("x"), 20000))
		case "/close":
			w.Header().Set("Connection", "close")
			w.Write([]byte("bye"))
		default:
			w.Write([]byte(r.Method + " " + r.Header.Get("Authorization") + " " + string(body)))
		}
	}))
	defer srv.Close()
	c, err := Dial(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	post := NewRequest(srv.URL, "POST", "/echo", []byte("hello"), "Authorization", "Bearer x")
	for i := 0; i < 3; i++ {
		for _, tc := range []struct {
			r      *Request
			status int
			want   string
		}{
			{post, 200, "POST Bearer x hello"},
			{post.WithBody([]byte("{}")), 200, "POST Bearer x {}"},
			{NewRequest(srv.URL, "GET", "/echo", nil), 200, "GET  "},
			{NewRequest(srv.URL, "GET", "/big", nil), 201, strings.Repeat("x", 20000)},
			{NewRequest(srv.URL, "GET", "/close", nil), 200, "bye"},
		} {
			st, body, err := c.Do(tc.r)
			if err != nil || st != tc.status || string(body) != tc.want {
				t.Fatalf("%d %.40q %v, want %d %.40q", st, body, err, tc.status, tc.want)
			}
		}
	}
}
