package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/loadgen"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

const benchUsage = `usage: herald bench populate [--invites N] [--bindings M] DATA_DIR
       herald bench run --url URL [flags]

  populate   fill DATA_DIR (not in use by a running Herald) with N invites
             and M bindings, for benchmarks at scale. Invites are spread over
             the last 60 days, 1% pending (with live ephemeral keys), the rest
             finished (70% resolved, 20% expired, 10% revoked or declined;
             secrets erased past invites.retention). Addresses are
             inv%09d@populate.test and bound%09d@populate.test. Bulk loads
             in large transactions with keys in order; shows progress and an
             ETA on a terminal, a summary line otherwise. Interrupting it
             (Ctrl-C) keeps every finished transaction; running it again adds
             only what is missing to reach N and M.
  run        drive a running Herald over HTTP with keep-alive connections and
             print throughput, p50 and p99 for: store-invite at several
             concurrencies (and how soon each invite's mail reached SMTP), the
             invite -> validate -> bind -> onbind cycle, 1,000-hash lookups,
             pubkey/isvalid and ephemeral/isvalid. It serves a homeserver
             (OpenID userinfo and onbind) and an SMTP server itself; Herald
             must be configured to use them (` + "`herald bench run --print-config`" + `).

Flags of run:
  --url URL[,URL...]    Herald's base URL (http://127.0.0.1:8090); several,
                        comma-separated, for replicas on one PostgreSQL
                        database: each step's connections are spread over
                        them in turn, the rest goes to the first
  --hs-listen ADDR      the benchmark homeserver (127.0.0.1:18448)
  --smtp-listen ADDR    the benchmark SMTP server (127.0.0.1:12525)
  --duration D          each load step (10s)
  --concurrency LIST    store-invite connections per step (1,8,64)
  --rate R              send store-invite at R requests/s over a step's
                        connections (steps of 2 or more), latency counted
                        from when each was due; 0, the default, sends as
                        fast as the connections go
  --cycles N            invite -> bind -> onbind cycles, one at a time (200)
  --bindings M          the bindings populate made (1000000), for lookups
  --only LIST           steps to run: store,cycle,lookup,isvalid (all)
  --metrics URL         Herald's /metrics (metrics.listen): also print the
                        server's CPU time per request of each step
  --print-config        print the configuration Herald needs and exit`

// benchCommand builds data dirs for benchmarks and runs loads against a server.
func benchCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError(benchUsage)
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, benchUsage)
		return nil
	case "populate":
		return benchPopulate(ctx, cfg, args[1:], stdout)
	case "run":
		return benchRun(ctx, args[1:], stdout)
	}
	return usageError(benchUsage)
}

func benchPopulate(ctx context.Context, cfg *config.Config, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench populate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nInv := fs.Int("invites", 1_000_000, "")
	nBind := fs.Int("bindings", 1_000_000, "")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 || *nInv < 0 || *nBind < 0 {
		return usageError(benchUsage)
	}
	c := *cfg
	c.DataDir = fs.Arg(0)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := server.New(&c, quiet, server.Options{Version: "bench"})
	if err != nil {
		return err
	}
	defer a.Close()
	tty := false
	if f, ok := stdout.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	p := &populator{a: a, cfg: &c, out: stdout, tty: tty, now: time.Now().UTC()}
	if err := p.invites(ctx, *nInv); err != nil {
		return err
	}
	return p.bindings(ctx, *nBind)
}

type populator struct {
	a   *server.App
	cfg *config.Config
	out io.Writer
	tty bool
	now time.Time
}

// progress reports done of total: on a terminal a line redrawn with the
// rate and an ETA, otherwise nothing until the summary.
type progress struct {
	out         io.Writer
	tty         bool
	what        string
	start, last time.Time
	from, total int
}

func (p *progress) update(done int) {
	if !p.tty || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	el := time.Since(p.start).Seconds()
	rate := float64(done-p.from) / el
	eta := "?"
	if rate > 0 {
		eta = time.Duration(float64(p.total-done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(p.out, "\r%s %d/%d (%d%%) %.0f/s ETA %s   ", p.what, done, p.total, done*100/max(p.total, 1), rate, eta)
}

func (p *progress) finish(done int, err error) {
	if p.tty {
		fmt.Fprint(p.out, "\r\033[K")
	}
	el := time.Since(p.start)
	state := "done"
	if err != nil {
		state = "stopped: " + err.Error()
	}
	fmt.Fprintf(p.out, "%s: %d/%d (%d added in %s, %.0f/s) %s\n", p.what, done, p.total, done-p.from,
		el.Round(time.Millisecond), float64(done-p.from)/max(el.Seconds(), 1e-9), state)
}

// Invites per transaction: their keys (ids, tokens, addresses) grow in
// order, so a transaction writes mostly new pages at the end of each bucket.
const populateBatch = 20_000

func (p *populator) invites(ctx context.Context, n int) error {
	s := p.a.Invites()
	counts, err := s.Counts()
	if err != nil {
		return err
	}
	have := 0
	for _, c := range counts {
		have += c
	}
	pr := &progress{out: p.out, tty: p.tty, what: "invites", start: time.Now(), from: have, total: n}
	span := 60 * 24 * time.Hour
	retention := p.cfg.Invites.Retention.D()
	expiry := p.cfg.Invites.Expiry.D()
	lt := p.a.Ring().Current()
	pendingFrom := n - n/100
	return inBatches(ctx, pr, have, n, func(have, end int) error {
		return s.DB().Update(func(tx *store.Tx) error {
			for i := have; i < end; i++ {
				created := p.now.Add(-span + time.Duration(float64(span)*float64(i)/float64(n)))
				inv := &invites.Invite{
					Medium: "email", Address: fmt.Sprintf("inv%09d@populate.test", i),
					RoomID: fmt.Sprintf("!room%d:populate.test", i%1000), Sender: "@bench:populate.test",
					Homeserver: "populate.test", RoomName: "Populated room", SenderDisplayName: "Bench",
					PublicKey: lt.PublicBase64(), KeyID: lt.ID, Via: "v2",
					Token: fmt.Sprintf("pop%09d", i), Created: created, MailedAt: created,
				}
				if expiry > 0 {
					inv.ExpiresAt = created.Add(expiry)
				}
				if i >= pendingFrom {
					pub, priv := keys.NewEphemeralKey()
					inv.EphemeralPublic, inv.EphemeralPrivate = keys.EncodeBase64(pub), keys.EncodeBase64(priv.Seed())
					inv.State = invites.StatePending
				} else {
					inv.StateChanged = created.Add(time.Hour)
					switch i % 10 {
					case 0, 1, 2, 3, 4, 5, 6:
						inv.State, inv.ResolvedMXID = invites.StateResolved, "@invitee:populate.test"
					case 7, 8:
						inv.State, inv.StateChanged = invites.StateExpired, inv.ExpiresAt
					case 9:
						inv.State = invites.StateRevoked
						if i%20 == 19 {
							inv.State = invites.StateDeclined
						}
					}
					if retention > 0 && p.now.Sub(inv.StateChanged) > retention {
						inv.Token = ""
					}
				}
				if err := s.InsertTx(tx, inv); err != nil {
					return err
				}
				if inv.EphemeralPublic != "" {
					if err := p.a.Ephemeral().Put(tx, inv.EphemeralPublic, "invite:"+strconv.FormatUint(inv.ID, 10), inv.ExpiresAt); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
}

func (p *populator) bindings(ctx context.Context, n int) error {
	id := p.a.Identity()
	have, err := id.BindingCount()
	if err != nil {
		return err
	}
	pr := &progress{out: p.out, tty: p.tty, what: "bindings", start: time.Now(), from: have, total: n}
	return inBatches(ctx, pr, have, n, func(have, end int) error {
		return id.DB().Update(func(tx *store.Tx) error {
			for i := have; i < end; i++ {
				b := identity.Binding{Medium: "email", Address: loadgen.BoundAddress(i), MXID: fmt.Sprintf("@user%d:populate.test", i)}
				if err := id.PutBinding(tx, b); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// inBatches runs write for [have, have+populateBatch) ... up to n, one
// transaction each, reporting progress after each and stopping (with what
// was committed kept) when ctx is done or a batch fails.
func inBatches(ctx context.Context, pr *progress, have, n int, write func(from, to int) error) error {
	for have < n {
		if err := ctx.Err(); err != nil {
			pr.finish(have, err)
			return err
		}
		end := min(have+populateBatch, n)
		if err := write(have, end); err != nil {
			pr.finish(have, err)
			return err
		}
		have = end
		pr.update(have)
	}
	pr.finish(have, nil)
	return nil
}

func benchRun(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := loadgen.BenchOptions{}
	fs.StringVar(&o.URL, "url", "http://127.0.0.1:8090", "")
	fs.StringVar(&o.HSListen, "hs-listen", "127.0.0.1:18448", "")
	fs.StringVar(&o.SMTPListen, "smtp-listen", "127.0.0.1:12525", "")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "")
	conc := fs.String("concurrency", "1,8,64", "")
	fs.Float64Var(&o.Rate, "rate", 0, "")
	fs.IntVar(&o.Cycles, "cycles", 200, "")
	fs.IntVar(&o.Bindings, "bindings", 1_000_000, "")
	only := fs.String("only", "store,cycle,lookup,isvalid", "")
	fs.StringVar(&o.MetricsURL, "metrics", "", "")
	printConfig := fs.Bool("print-config", false, "")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return usageError(benchUsage)
	}
	for _, u := range strings.Split(o.URL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			o.URLs = append(o.URLs, u)
		}
	}
	if len(o.URLs) == 0 || o.Rate < 0 {
		return usageError(benchUsage)
	}
	o.URL = o.URLs[0]
	if *printConfig {
		fmt.Fprint(stdout, loadgen.BenchConfig(o))
		return nil
	}
	for _, c := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			return usageError(benchUsage)
		}
		o.Concurrency = append(o.Concurrency, n)
	}
	for _, s := range strings.Split(*only, ",") {
		switch s = strings.TrimSpace(s); s {
		case "store", "cycle", "lookup", "isvalid":
			o.Steps = append(o.Steps, s)
		default:
			return usageError(benchUsage)
		}
	}
	o.Out = stdout
	return loadgen.RunBench(ctx, o)
}
