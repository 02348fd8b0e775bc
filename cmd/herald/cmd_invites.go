package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/invites"
)

const invitesUsage = `usage: herald invites list [--state S] [--address A] [--room R] [--sender M] [--limit N]
       herald invites show ID | revoke ID

  list        stored invites, newest first (50 unless --limit): id, state,
              creation time, room, sender and address; --state is one of
              pending, resolved, expired, revoked, declined
  show ID     one invite in full (its token and keys excepted) with its
              onbind deliveries
  revoke ID   withdraw a pending invite (or one resolved but not yet delivered):
              it is never delivered and its ephemeral key answers invalid

Works while Herald runs (through data_dir/control.sock) and when it is stopped.`

// invitesCommand manages stored invites.
var invitesCommand = liveCommand("invites", invitesUsage, func(args []string) error {
	_, err := parseInvitesArgs(args)
	return err
})

type invitesArgs struct {
	verb   string
	id     uint64
	filter invites.Filter
}

func parseInvitesArgs(args []string) (invitesArgs, error) {
	ia := invitesArgs{verb: args[0]}
	switch ia.verb {
	case "revoke", "show":
		if len(args) != 2 {
			return ia, usageError(invitesUsage)
		}
		id, err := strconv.ParseUint(args[1], 10, 64)
		if err != nil || id == 0 {
			return ia, usageError(fmt.Sprintf("invite ID must be a positive number (got %q)", args[1]))
		}
		ia.id = id
	case "list":
		fs := flag.NewFlagSet("invites list", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.StringVar(&ia.filter.State, "state", "", "")
		fs.StringVar(&ia.filter.Address, "address", "", "")
		fs.StringVar(&ia.filter.RoomID, "room", "", "")
		fs.StringVar(&ia.filter.Sender, "sender", "", "")
		fs.IntVar(&ia.filter.Limit, "limit", 50, "")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
			return ia, usageError(invitesUsage)
		}
		if ia.filter.State != "" && !slices.Contains(invites.States, ia.filter.State) {
			return ia, usageError(fmt.Sprintf("--state must be one of %s (got %q)", strings.Join(invites.States, ", "), ia.filter.State))
		}
		if ia.filter.Limit < 1 || ia.filter.Limit > 10000 {
			return ia, usageError("--limit must be between 1 and 10000")
		}
	default:
		return ia, usageError(invitesUsage)
	}
	return ia, nil
}

// invitesOp runs `invites list|show|revoke` on an open App.
func invitesOp(ctx context.Context, a *server.App, req control.Request, out, stream io.Writer) error {
	ia, err := parseInvitesArgs(req.Args[1:])
	if err != nil {
		return err
	}
	s := a.Invites()
	switch ia.verb {
	case "revoke":
		err := s.Revoke(ia.id, req.By)
		if err := audited(a, req, "invite.revoke", "invite "+strconv.FormatUint(ia.id, 10), err); err != nil {
			if errors.Is(err, invites.ErrNotFound) {
				return fmt.Errorf("no invite %d", ia.id)
			}
			return err
		}
		fmt.Fprintf(out, "invite %d revoked\n", ia.id)
		return nil
	case "show":
		inv, err := s.Get(ia.id)
		if errors.Is(err, invites.ErrNotFound) {
			return fmt.Errorf("no invite %d", ia.id)
		} else if err != nil {
			return err
		}
		return showInvite(out, a, inv)
	}
	list, total, err := s.List(ia.filter)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tROOM\tSENDER\tADDRESS")
	for _, inv := range list {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", inv.ID, inv.State, inv.Created.UTC().Format(time.RFC3339), inv.RoomID, inv.Sender, inv.Address)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if total > len(list) {
		fmt.Fprintf(out, "(%d of %d shown; use --limit)\n", len(list), total)
	}
	return nil
}

func showInvite(out io.Writer, a *server.App, inv *invites.Invite) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	row("id", strconv.FormatUint(inv.ID, 10))
	row("state", inv.State)
	row("state changed", ts(inv.StateChanged))
	row("created", ts(inv.Created))
	row("expires", ts(inv.ExpiresAt))
	row("address", inv.Medium+" "+inv.Address)
	row("room", inv.RoomID)
	row("room name", inv.RoomName)
	row("sender", inv.Sender)
	row("homeserver", inv.Homeserver)
	row("api", inv.Via)
	row("resolved to", inv.ResolvedMXID)
	row("signing key", inv.KeyID)
	if inv.MailID != 0 {
		row("mail", strconv.FormatUint(inv.MailID, 10))
	}
	dels, err := a.Deliveries().ByInvite(inv.ID)
	if err != nil {
		return err
	}
	for _, d := range dels {
		row("onbind delivery", fmt.Sprintf("%d to %s: %s, %d attempts", d.ID, d.Server, d.State, len(d.Attempts)))
	}
	return tw.Flush()
}
