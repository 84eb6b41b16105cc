// Report owns what a run found: one line per checked thing, the problems (which fail the
// run) and the warnings (which do not), and how they are printed.
package main

import (
	"fmt"
	"io"
	"regexp"
)

// Report collects the results of every check of one run.
type Report struct {
	lines    []string
	Problems []string
	Warnings []string
}

// Check records one checked thing: ok with its summary, or failed with its problems, each
// prefixed with the thing so a problem names where it is without its context.
func (r *Report) Check(thing, summary string, problems []string) {
	status := "ok  "
	if len(problems) > 0 {
		status = "FAIL"
		summary = fmt.Sprintf("%s, %d problem(s)", summary, len(problems))
	}
	r.lines = append(r.lines, fmt.Sprintf("%s %s: %s", status, thing, summary))
	for _, p := range problems {
		r.Problems = append(r.Problems, thing+": "+newlines.ReplaceAllString(p, " "))
	}
}

// newlines in a library's error (YAML errors list one per line) would break the list.
var newlines = regexp.MustCompile(`\s*\n\s*`)

// Warn records something worth knowing that does not fail the run.
func (r *Report) Warn(thing, message string) {
	r.Warnings = append(r.Warnings, thing+": "+message)
}

// Failed says whether any check found a problem.
func (r *Report) Failed() bool { return len(r.Problems) > 0 }

// Print writes the checked lines, then warnings and problems as lists, so the reason for a
// failure is at the end of the output where a CI log shows it.
func (r *Report) Print(w io.Writer) error {
	for _, line := range r.lines {
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	sections := []struct {
		title string
		items []string
	}{{"warning(s)", r.Warnings}, {"problem(s)", r.Problems}}
	for _, s := range sections {
		if len(s.items) == 0 {
			continue
		}
		if _, err := fmt.Fprintf(w, "\n%d %s:\n", len(s.items), s.title); err != nil {
			return err
		}
		for _, item := range s.items {
			if _, err := fmt.Fprintf(w, "  - %s\n", item); err != nil {
				return err
			}
		}
	}
	return nil
}

// problems accumulates the messages of one checked thing.
type problems []string

func (p *problems) addf(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}
