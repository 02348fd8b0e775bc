package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
)

const queueUsage = `usage: herald queue stats
       herald queue list outbox|onbind [--state S] [--limit N]
       herald queue retry outbox|onbind ID...
       herald queue drop outbox|onbind ID...

  stats       both queues: records by state, failed attempts in the last
              24 hours, and how long the oldest pending record has waited
  list        records newest first (50 unless --limit), with their attempts
              and last error; --state: pending, sent, failed (outbox) or
              pending, delivered, failed, cancelled (onbind)
  retry ID... make failed (or pending) records due now with a fresh retry
              budget; all or none; a sent or delivered record is refused
  drop ID...  outbox: delete the mail and its history; onbind: cancel the
              delivery (its history is kept); all or none

Works while Herald runs (through data_dir/control.sock) and when it is stopped.`

// queueCommand shows and acts on the outbox and the onbind delivery queue.
var queueCommand = liveCommand("queue", queueUsage, func(args []string) error {
	_, err := parseQueueArgs(args)
	return err
})

// liveCommand is a command whose every verb is an operation (see live):
// no arguments or "help" print usage; check catches mistakes on the command
// line before anything is opened; the rest runs live, or on the data dir.
func liveCommand(name, usage string, check func(args []string) error) func(context.Context, *config.Config, *slog.Logger, []string, io.Writer) error {
	return func(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
		switch {
		case len(args) == 0:
			return usageError(usage)
		case args[0] == "help":
			fmt.Fprintln(stdout, usage)
			return nil
		}
		if err := check(args); err != nil {
			return err
		}
		return live(ctx, cfg, log, control.Request{Args: append([]string{name}, args...)}, stdout, nil)
	}
}

type queueArgs struct {
	verb, queue, state string
	limit              int
	ids                []uint64
}

var queueStates = map[string][]string{
	"outbox": {string(mailer.Pending), string(mailer.Sent), string(mailer.Failed)},
	"onbind": {string(invites.DeliveryPending), string(invites.DeliveryDelivered), string(invites.DeliveryFailed), string(invites.DeliveryCancelled)},
}

func parseQueueArgs(args []string) (queueArgs, error) {
	qa := queueArgs{verb: args[0], limit: 50}
	if qa.verb == "stats" {
		if len(args) != 1 {
			return qa, usageError(queueUsage)
		}
		return qa, nil
	}
	if len(args) < 2 || queueStates[args[1]] == nil {
		return qa, usageError(queueUsage)
	}
	qa.queue = args[1]
	switch qa.verb {
	case "list":
		fs := flag.NewFlagSet("queue list", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.StringVar(&qa.state, "state", "", "")
		fs.IntVar(&qa.limit, "limit", 50, "")
		if err := fs.Parse(args[2:]); err != nil || fs.NArg() > 0 {
			return qa, usageError(queueUsage)
		}
		if qa.state != "" && !slices.Contains(queueStates[qa.queue], qa.state) {
			return qa, usageError(fmt.Sprintf("--state must be one of %s (got %q)", strings.Join(queueStates[qa.queue], ", "), qa.state))
		}
		if qa.limit < 1 || qa.limit > 10000 {
			return qa, usageError("--limit must be between 1 and 10000")
		}
	case "retry", "drop":
		if len(args) < 3 {
			return qa, usageError(queueUsage)
		}
		for _, a := range args[2:] {
			id, err := strconv.ParseUint(a, 10, 64)
			if err != nil || id == 0 {
				return qa, usageError(fmt.Sprintf("ID must be a positive number (got %q)", a))
			}
			qa.ids = append(qa.ids, id)
		}
	default:
		return qa, usageError(queueUsage)
	}
	return qa, nil
}

// queueOp runs `queue stats|list|retry|drop` on an open App.
func queueOp(ctx context.Context, a *server.App, req control.Request, out, stream io.Writer) error {
	qa, err := parseQueueArgs(req.Args[1:])
	if err != nil {
		return err
	}
	switch qa.verb {
	case "stats":
		return queueStats(out, a)
	case "list":
		return queueList(out, a, qa)
	}
	ids := make([]string, len(qa.ids))
	for i, id := range qa.ids {
		ids[i] = strconv.FormatUint(id, 10)
	}
	target := qa.queue + " " + strings.Join(ids, ",")
	switch {
	case qa.queue == "outbox" && qa.verb == "retry":
		err = a.Mailer().Retry(qa.ids...)
	case qa.queue == "outbox":
		err = a.Mailer().Drop(qa.ids...)
	case qa.verb == "retry":
		err = a.Deliveries().Retry(qa.ids...)
	default:
		err = a.Deliveries().Drop(qa.ids...)
	}
	if err := audited(a, req, qa.queue+"."+qa.verb, target, err); err != nil {
		if errors.Is(err, mailer.ErrNotFound) || errors.Is(err, invites.ErrNoDelivery) ||
			errors.Is(err, mailer.ErrState) || errors.Is(err, invites.ErrDeliveryState) {
			return fmt.Errorf("%v; nothing changed", err)
		}
		return err
	}
	verb := map[string]string{"retry": "due now", "drop": "dropped"}[qa.verb]
	fmt.Fprintf(out, "%s %s: %s\n", qa.queue, strings.Join(ids, ", "), verb)
	if qa.verb == "retry" {
		a.Mailer().Wake()
		a.Deliveries().Wake()
	}
	return nil
}

func queueStats(out io.Writer, a *server.App) error {
	ms, err := a.Mailer().Stats()
	if err != nil {
		return err
	}
	mn, mOldest, err := a.Mailer().Backlog()
	if err != nil {
		return err
	}
	ds, err := a.Deliveries().Stats()
	if err != nil {
		return err
	}
	dn, dOldest, err := a.Deliveries().Backlog()
	if err != nil {
		return err
	}
	waited := func(n int, oldest time.Time) string {
		if n == 0 || oldest.IsZero() {
			return "-"
		}
		return time.Since(oldest).Round(time.Second).String()
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tPENDING\tDONE\tFAILED\tCANCELLED\tFAILED ATTEMPTS 24H\tOLDEST PENDING WAITED")
	fmt.Fprintf(tw, "outbox\t%d\t%d\t%d\t-\t%d\t%s\n", ms.Pending, ms.Sent, ms.Failed, ms.FailedAttempts, waited(mn, mOldest))
	fmt.Fprintf(tw, "onbind\t%d\t%d\t%d\t%d\t-\t%s\n", ds.Pending, ds.Delivered, ds.Failed, ds.Cancelled, waited(dn, dOldest))
	return tw.Flush()
}

func queueList(out io.Writer, a *server.App, qa queueArgs) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	last := func(s string) string {
		if s = strings.Join(strings.Fields(s), " "); len(s) > 60 {
			s = s[:57] + "..."
		}
		if s == "" {
			return "-"
		}
		return s
	}
	if qa.queue == "outbox" {
		list, err := a.Mailer().List(mailer.Filter{State: mailer.State(qa.state), Limit: qa.limit})
		if err != nil {
			return err
		}
		fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tNEXT ATTEMPT\tATTEMPTS\tKIND\tTO\tLAST")
		for _, m := range list {
			next, reply := "-", m.LastError
			if m.State == mailer.Pending {
				next = ts(m.NextAttempt)
			}
			if a := m.LastAttempt(); a != nil && reply == "" {
				reply = a.Reply
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", m.ID, m.State, ts(m.Created), next, len(m.Attempts), m.Kind, matrix.RedactEmail(m.To), last(reply))
		}
		return tw.Flush()
	}
	list, _, err := a.Deliveries().List(invites.DeliveryFilter{State: invites.DeliveryState(qa.state), Limit: qa.limit})
	if err != nil {
		return err
	}
	fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tNEXT ATTEMPT\tATTEMPTS\tHOMESERVER\tMXID\tLAST")
	for _, d := range list {
		next := "-"
		if d.State == invites.DeliveryPending {
			next = ts(d.NextAttempt)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.ID, d.State, ts(d.Created), next, len(d.Attempts), d.Server, d.MXID, last(d.LastError))
	}
	return tw.Flush()
}
