// .env.example: its variables, each with the comment block directly above it, which is
// what documents the variable for whoever copies the file to .env.
package main

import (
	"fmt"
	"regexp"
	"strings"
)

// EnvVar is one assignment of .env.example.
type EnvVar struct {
	Name string
	Line int
	// Doc is the text of the comment lines directly above the assignment.
	Doc string
}

var envAssignment = regexp.MustCompile(`^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=`)

// parseEnvExample reads the variables of an env file in order, with the lines that are
// neither blank, comments nor assignments as problems.
func parseEnvExample(data string) ([]EnvVar, []string) {
	var vars []EnvVar
	var found problems
	var doc []string
	seen := map[string]int{}
	for i, raw := range strings.Split(data, "\n") {
		line := strings.TrimSpace(raw)
		switch {
		case line == "":
			// A blank line ends a comment block: a comment above it documents no variable.
			doc = nil
		case strings.HasPrefix(line, "#"):
			doc = append(doc, strings.TrimSpace(strings.TrimPrefix(line, "#")))
		default:
			m := envAssignment.FindStringSubmatch(line)
			if m == nil {
				found.addf("line %d is not VAR=value: %q", i+1, line)
				doc = nil
				continue
			}
			if first, ok := seen[m[1]]; ok {
				found.addf("%s is assigned twice (lines %d and %d)", m[1], first, i+1)
			}
			seen[m[1]] = i + 1
			vars = append(vars, EnvVar{Name: m[1], Line: i + 1, Doc: strings.TrimSpace(strings.Join(doc, " "))})
			doc = nil
		}
	}
	return vars, found
}

// undocumented lists the variables without a comment directly above them.
func undocumented(vars []EnvVar) []string {
	var found []string
	for _, v := range vars {
		if v.Doc == "" {
			found = append(found, fmt.Sprintf("%s (line %d) is not documented: put a # comment directly above it", v.Name, v.Line))
		}
	}
	return found
}
