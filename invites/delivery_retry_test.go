package invites_test

import (
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/invites"
)

// waitCond polls cond until it holds or 10 s pass.
func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// delivery invites address from alice, binds it to mxid and returns the
// queued onbind delivery.
func (e *env) delivery(t *testing.T, tok, address, mxid string) invites.Delivery {
	t.Helper()
	a := e.storeInvite(t, tok, inviteBody(alice, address))
	inv, err := e.App.Invites().ByToken(a.Token)
	if err != nil {
		t.Fatal(err)
	}
	e.bind(t, address, mxid)
	var dls []invites.Delivery
	waitCond(t, "the delivery to be queued", func() bool {
		dls, _ = e.App.Deliveries().ByInvite(inv.ID)
		return len(dls) == 1
	})
	return dls[0]
}

// A failed attempt without an answer (status 0) logs its error; the default
// backoff starts at 2 s (delivery.min_backoff), for an invitee who just bound.
func TestDeliveryNetworkErrorLoggedAndRetriedSoon(t *testing.T) {
	e := start(t, func(c *config.Config) { c.Federation.Servers["hs2.test"] = "http://127.0.0.1:1" })
	tok := e.register(t, alice)
	dl := e.delivery(t, tok, "down@example.org", "@down:hs2.test")
	var got *invites.Delivery
	waitCond(t, "a failed attempt", func() bool {
		got, _ = e.App.Deliveries().Get(dl.ID)
		return got != nil && len(got.Attempts) == 1
	})
	// PostgreSQL keeps next_attempt to the microsecond, the attempt's time
	// exactly (in its JSON): they may differ by less than a microsecond.
	if wait := got.NextAttempt.Sub(got.Attempts[0].At); wait < 2*time.Second-time.Microsecond || wait > 2*time.Second+time.Microsecond {
		t.Fatalf("first retry %v after the attempt, want the 2s default", wait)
	}
	// The console's dashboard counts it among the failed attempts of the
	// last 24 hours (from the queue's index of failures).
	st, err := invites.NewConsole(e.App.Invites(), e.App.Deliveries()).DeliveryStats(t.Context())
	if err != nil || st.Pending != 1 || st.FailedAttempts24h < 1 {
		t.Fatalf("delivery stats %+v, %v: want 1 pending and its failed attempt", st, err)
	}
	var line string
	waitCond(t, "the retry to be logged", func() bool {
		for _, l := range strings.Split(e.Logs(), "\n") {
			if strings.Contains(l, "onbind delivery will be retried") {
				line = l
				return true
			}
		}
		return false
	})
	if !strings.Contains(line, "status=0") || !strings.Contains(line, "err=") || !strings.Contains(line, "connection refused") {
		t.Fatalf("the retry log line does not say why: %s", line)
	}
}
