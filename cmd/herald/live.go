package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/store"
)

// An operation is the part of a command that works on Herald's state. The
// same code runs inside a running server (asked through the control socket)
// or, when Herald is stopped, in the CLI on the data dir it opens.
// Data for the CLI to write itself (a backup) goes to stream.
type operation func(ctx context.Context, a *server.App, req control.Request, out, stream io.Writer) error

// operations are the commands the control socket accepts, by req.Args[0].
var operations = map[string]operation{
	"invites": invitesOp,
	"queue":   queueOp,
	"admin":   adminOp,
	"keys":    keysOp,
	"lookup":  lookupOp,
	"backup":  backupOp,
}

// live runs req on the Herald serving cfg.DataDir through its control
// socket, or on the data dir itself when no Herald answers. Run as root on a
// data dir that belongs to another user, it first becomes that user, so
// the files it writes stay readable by the server. consume, if not nil,
// reads the operation's stream.
func live(ctx context.Context, cfg *config.Config, log *slog.Logger, req control.Request, stdout io.Writer, consume func(io.Reader) error) error {
	if req.By == "" {
		req.By = "cli"
		if u, err := user.Current(); err == nil {
			req.By = "cli:" + u.Username
		}
	}
	if err := runAsDataDirOwner(cfg.DataDir, log); err != nil {
		return err
	}
	resp, err := control.Call(ctx, control.Path(cfg.DataDir), req, consume)
	if err == nil {
		log.Debug("command run by the running server", "command", req.Args[0])
		_, _ = io.WriteString(stdout, resp.Output)
		switch {
		case resp.Error == "":
			return nil
		case resp.Usage:
			return usageError(resp.Error)
		}
		return errors.New(resp.Error)
	}
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w: run the command as the user Herald runs as (the owner of data_dir), or as root", err)
	} else if !errors.Is(err, control.ErrNoServer) {
		return err
	}
	a, err := server.New(cfg, log, server.Options{Version: fullVersion()})
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%w and does not answer on %s (an older Herald?): stop Herald first", err, control.Path(cfg.DataDir))
	} else if err != nil {
		return err
	}
	defer a.Close()
	if consume == nil {
		return runOperation(ctx, a, req, stdout, io.Discard)
	}
	// The operation streams into a pipe that consume reads, as it would
	// read the control socket.
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := runOperation(ctx, a, req, stdout, pw)
		pw.CloseWithError(err)
		errc <- err
	}()
	cerr := consume(pr)
	pr.CloseWithError(errors.New("the stream's reader stopped"))
	if err := <-errc; err != nil && cerr == nil {
		return err
	}
	return cerr
}

func runOperation(ctx context.Context, a *server.App, req control.Request, out, stream io.Writer) error {
	op, ok := operations[req.Args[0]]
	if !ok {
		return usageError(fmt.Sprintf("unknown command %q", req.Args[0]))
	}
	return op(ctx, a, req, out, stream)
}

// controlHandler answers the control socket of a running server.
func controlHandler(ctx context.Context, a *server.App, req control.Request, stream io.Writer) control.Response {
	var out bytes.Buffer
	err := runOperation(ctx, a, req, &out, stream)
	resp := control.Response{Output: out.String()}
	if err != nil {
		resp.Error = oneLine(err)
		resp.Usage = errors.As(err, new(usageError))
	}
	return resp
}

// audited records a command's change in the console's audit log (when the
// console is enabled) and passes err on.
func audited(a *server.App, req control.Request, action, target string, err error) error {
	if h := a.Admin(); h != nil {
		detail := "herald " + req.Args[0]
		if err != nil {
			detail += ": " + oneLine(err)
		}
		h.RecordCLI(req.By, action, target, detail, err == nil)
	}
	return err
}
