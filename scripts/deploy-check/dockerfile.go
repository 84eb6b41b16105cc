// Dockerfiles: parsed with BuildKit's own parser, then held to our rules: pinned base
// images, a numeric non-root user in the final stage, COPY sources that exist in the build
// context, and a .dockerignore that keeps the context small.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
)

// dockerfiles are the images we build, each with the repository root as its build context.
var dockerfiles = []string{"Dockerfile", "claude-agent/Dockerfile"}

// checkDockerfiles checks .dockerignore, then each Dockerfile against the context it leaves.
func checkDockerfiles(repo string, report *Report) {
	ignore, found := loadDockerignore(repo)
	report.Check(".dockerignore", "excludes target, **/node_modules and .git", found)
	for _, name := range dockerfiles {
		summary, found := checkDockerfile(repo, name, ignore)
		report.Check(name, summary, found)
	}
}

// dockerfile is one parsed Dockerfile.
type dockerfile struct {
	lex      *shell.Lex
	stages   []instructions.Stage
	metaArgs map[string]string
}

func parseDockerfile(data []byte) (*dockerfile, error) {
	result, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	stages, metaArgs, err := instructions.Parse(result.AST, nil)
	if err != nil {
		return nil, err
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("no FROM")
	}
	args := map[string]string{}
	for _, arg := range metaArgs {
		for _, kv := range arg.Args {
			args[kv.Key] = deref(kv.Value)
		}
	}
	return &dockerfile{lex: shell.NewLex(result.EscapeToken), stages: stages, metaArgs: args}, nil
}

// expand substitutes ARG and ENV values into word as BuildKit would.
func (d *dockerfile) expand(word string, env map[string]string) (string, error) {
	pairs := make([]string, 0, len(env))
	for k, v := range env {
		pairs = append(pairs, k+"="+v)
	}
	expanded, _, err := d.lex.ProcessWord(word, shell.EnvsFromSlice(pairs))
	return expanded, err
}

// checkDockerfile checks one Dockerfile; name is relative to repo, the build context.
func checkDockerfile(repo, name string, ignore *patternmatcher.PatternMatcher) (string, []string) {
	data, err := os.ReadFile(filepath.Join(repo, name))
	if err != nil {
		return "unreadable", []string{fileProblem(repo, err)}
	}
	d, err := parseDockerfile(data)
	if err != nil {
		return "unparsable", []string{err.Error()}
	}
	found := d.baseImages()
	found = append(found, d.finalUser()...)
	found = append(found, d.copySources(repo, ignore)...)
	return fmt.Sprintf("%d stages", len(d.stages)), found
}

// baseImages: each FROM, after the ARG defaults, is an earlier stage, scratch, or pinned.
func (d *dockerfile) baseImages() []string {
	var found problems
	earlier := map[string]bool{}
	for i, stage := range d.stages {
		base, err := d.expand(stage.BaseName, d.metaArgs)
		switch {
		case err != nil:
			found.addf("stage %d (FROM %s): %v", i+1, stage.BaseName, err)
		case earlier[strings.ToLower(base)] || base == "scratch":
		default:
			if p := imageProblem(base); p != "" {
				found.addf("stage %d (FROM %s): %s", i+1, stage.BaseName, p)
			}
		}
		if stage.Name != "" {
			earlier[strings.ToLower(stage.Name)] = true
		}
	}
	return found
}

var numericUser = regexp.MustCompile(`^([0-9]+)(:[0-9]+)?$`)

// finalUser: the image runs as a numeric non-zero uid, which Kubernetes' runAsNonRoot can
// verify without reading /etc/passwd.
func (d *dockerfile) finalUser() []string {
	user, ok := d.lastUser(len(d.stages) - 1)
	if !ok {
		return []string{"the final stage sets no USER, so it runs as root; set a numeric uid (e.g. USER 10001:10001)"}
	}
	m := numericUser.FindStringSubmatch(user)
	if m == nil {
		return []string{fmt.Sprintf("the final stage's USER %q is not a numeric uid (e.g. 10001:10001)", user)}
	}
	if strings.TrimLeft(m[1], "0") == "" {
		return []string{fmt.Sprintf("the final stage's USER %q is root", user)}
	}
	return nil
}

// lastUser finds the USER in effect at the end of stage i, following FROM of earlier stages.
func (d *dockerfile) lastUser(i int) (string, bool) {
	for j := len(d.stages[i].Commands) - 1; j >= 0; j-- {
		if u, ok := d.stages[i].Commands[j].(*instructions.UserCommand); ok {
			return u.User, true
		}
	}
	for j := i - 1; j >= 0; j-- {
		if d.stages[j].Name != "" && strings.EqualFold(d.stages[j].Name, d.stages[i].BaseName) {
			return d.lastUser(j)
		}
	}
	return "", false
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
