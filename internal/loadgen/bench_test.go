package loadgen_test

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/loadgen"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/store"
)

// herald bench run against an in-process Herald configured as
// --print-config says: every step runs and nothing fails.
func TestRunBench(t *testing.T) {
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sh, sp, _ := net.SplitHostPort(sl.Addr().String())
	e := testenv.Start(t, func(c *config.Config) {
		c.SMTP.Host, c.SMTP.Security = sh, "none"
		c.SMTP.Port, _ = strconv.Atoi(sp)
		c.Federation.Servers[loadgen.BenchHomeserver] = "http://" + hl.Addr().String()
		c.Federation.AllowPrivateAddresses = true
		c.Invites.RateLimits.Sender.PerHour, c.Invites.RateLimits.Room.PerHour = 0, 0
		c.Invites.RateLimits.Address.PerHour, c.Invites.RateLimits.Homeserver.PerHour = 0, 0
		c.Validation.RateLimits.Address.PerHour, c.Validation.RateLimits.Account.PerHour = 0, 0
		c.Validation.RateLimits.ClientIP.PerHour = 0
	})
	id := e.App.Identity()
	if err := id.DB().Update(func(tx *store.Tx) error {
		for i := 0; i < 100; i++ {
			if err := id.PutBinding(tx, identity.Binding{Medium: "email", Address: loadgen.BoundAddress(i), MXID: "@user" + strconv.Itoa(i) + ":populate.test"}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = loadgen.RunBench(context.Background(), loadgen.BenchOptions{
		URL: e.URL, HSListener: hl, SMTPListener: sl, Duration: 300 * time.Millisecond,
		Concurrency: []int{1, 4}, Cycles: 3, Bindings: 100,
		Steps: []string{"store", "cycle", "lookup", "isvalid"}, Out: &out,
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	got := out.String()
	for _, want := range []string{"store-invite         1 conn", "store-invite         4 conn", "mail accepted by SMTP",
		"invite->bind->onbind 1 conn", "(3 in", "lookup 1000 hashes", "pubkey/isvalid", "ephemeral/isvalid"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "failed") || strings.Contains(got, "not after 30 s") && !strings.Contains(got, ", 0 not after 30 s") {
		t.Errorf("something failed:\n%s", got)
	}
}
