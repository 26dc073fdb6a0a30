// Stand-in for github.com/mndrix/tap-go (not in Debian): the API runtime-tools uses, same TAP 13 output.
package tap

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

type T struct {
	n      *int
	TODO   bool
	Writer io.Writer
}

func New() *T { n := 1; return &T{n: &n} }

func (t *T) w() io.Writer {
	if t.Writer == nil {
		return os.Stdout
	}
	return t.Writer
}

func (t *T) Header(count int) {
	fmt.Fprintf(t.w(), "TAP version 13\n")
	if count > 0 {
		fmt.Fprintf(t.w(), "1..%d\n", count)
	}
}

func (t *T) Ok(test bool, description string) {
	ok := "ok"
	if !test {
		ok = "not ok"
	}
	if t.TODO {
		fmt.Fprintf(t.w(), "%s %d # TODO %s\n", ok, *t.n, description)
	} else {
		fmt.Fprintf(t.w(), "%s %d - %s\n", ok, *t.n, description)
	}
	*t.n++
}

func (t *T) Fail(description string) { t.Ok(false, description) }
func (t *T) Pass(description string) { t.Ok(true, description) }
func (t *T) Count() int              { return *t.n - 1 }
func (t *T) AutoPlan()               { fmt.Fprintf(t.w(), "1..%d\n", t.Count()) }
func (t *T) Todo() *T                { c := *t; c.TODO = true; return &c }

func (t *T) Skip(count int, description string) {
	for i := 0; i < count; i++ {
		fmt.Fprintf(t.w(), "ok %d # SKIP %s\n", *t.n, description)
		*t.n++
	}
}

func esc(s string) string { return strings.Replace(strings.TrimRight(s, "\n"), "\n", "\n# ", -1) }

func (t *T) Diagnostic(message string) { fmt.Fprintf(t.w(), "# %s\n", esc(message)) }

func (t *T) Diagnosticf(format string, a ...interface{}) {
	fmt.Fprintf(t.w(), "# "+esc(format)+"\n", a...)
}

// YAML writes a YAML block as JSON (a YAML subset), like tap-go without the yaml build tag.
func (t *T) YAML(message interface{}) error {
	b, err := json.MarshalIndent(message, "  ", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintf(t.w(), "  ---\n  %s\n  ...\n", b)
	return nil
}
