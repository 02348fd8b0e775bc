package pgtest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// Each test gets its own empty database on the socket, not a TCP port, and
// what one test writes another does not see.
func TestDSNGivesEachTestItsOwnDatabase(t *testing.T) {
	dsns := make(chan string, 2)
	// The group returns when both parallel subtests are done.
	t.Run("group", func(t *testing.T) {
		for _, name := range []string{"a", "b"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				dsn := DSN(t)
				dsns <- dsn
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				var tables int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil {
					t.Fatal(err)
				}
				if tables != 0 {
					t.Fatalf("a new database has %d tables", tables)
				}
				if _, err := conn.Exec(ctx, "CREATE TABLE mine (x int)"); err != nil {
					t.Fatal(err)
				}
				var listen string
				if err := conn.QueryRow(ctx, "SHOW listen_addresses").Scan(&listen); err != nil {
					t.Fatal(err)
				}
				if listen != "" {
					t.Fatalf("listen_addresses = %q, want only the unix socket", listen)
				}
				if conn.PgConn().Conn().RemoteAddr().Network() != "unix" {
					t.Fatalf("connected over %s, want unix", conn.PgConn().Conn().RemoteAddr().Network())
				}
			})
		}
	})
	close(dsns)
	if a, b := <-dsns, <-dsns; a == b {
		t.Fatalf("two tests got the same database %q", a)
	}
}
