// The Docker build context: what .dockerignore leaves in it, and whether every COPY/ADD
// source of a Dockerfile is there.
package main

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// mustIgnore are paths the context must not contain, each with the pattern that excludes
// it: build output, dependencies and history are large and never needed by a build.
var mustIgnore = []struct{ path, pattern string }{
	{"target", "target"},
	{"node_modules", "**/node_modules"},
	{"frontend/node_modules", "**/node_modules"},
	{"e2e/node_modules", "**/node_modules"},
	{".git", ".git"},
}

// loadDockerignore reads the root .dockerignore and checks it excludes mustIgnore; the
// matcher is nil if it could not be read.
func loadDockerignore(repo string) (*patternmatcher.PatternMatcher, []string) {
	f, err := os.Open(filepath.Join(repo, ".dockerignore"))
	if err != nil {
		return nil, []string{fileProblem(repo, err)}
	}
	patterns, err := ignorefile.ReadAll(f)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return nil, []string{err.Error()}
	}
	matcher, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, []string{err.Error()}
	}
	var found problems
	for _, m := range mustIgnore {
		ignored, err := matcher.MatchesOrParentMatches(m.path)
		if err != nil || !ignored {
			found.addf("does not exclude %q (add %s)", m.path, m.pattern)
		}
	}
	return matcher, found
}

// copySources: every COPY/ADD source from the build context exists in the repository and
// is not excluded by .dockerignore. Copies from stages or images, heredocs and URLs are
// not from the context.
func (d *dockerfile) copySources(repo string, ignore *patternmatcher.PatternMatcher) []string {
	var found problems
	for _, stage := range d.stages {
		env := map[string]string{}
		for _, cmd := range stage.Commands {
			var sources []string
			switch c := cmd.(type) {
			case *instructions.ArgCommand:
				for _, kv := range c.Args {
					// An ARG without a default takes the value of the global ARG of its name.
					value, ok := d.metaArgs[kv.Key]
					if kv.Value != nil || !ok {
						value = deref(kv.Value)
					}
					env[kv.Key] = value
				}
			case *instructions.EnvCommand:
				for _, kv := range c.Env {
					env[kv.Key] = kv.Value
				}
			case *instructions.CopyCommand:
				if c.From == "" {
					sources = c.SourcePaths
				}
			case *instructions.AddCommand:
				sources = c.SourcePaths
			}
			for _, src := range sources {
				if p := d.sourceProblem(repo, src, env, ignore); p != "" {
					found.addf("%s: %s", cmd, p)
				}
			}
		}
	}
	return found
}

// sourceProblem says what is wrong with one COPY/ADD source, or "".
func (d *dockerfile) sourceProblem(repo, src string, env map[string]string, ignore *patternmatcher.PatternMatcher) string {
	if strings.Contains(src, "://") || strings.HasPrefix(src, "git@") {
		return ""
	}
	expanded, err := d.expand(src, env)
	if err != nil {
		return fmt.Sprintf("source %q: %v", src, err)
	}
	// Sources are relative to the context root even when written absolute.
	clean := strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(expanded)), "/")
	if clean == "" {
		return ""
	}
	matches, err := filepath.Glob(filepath.Join(repo, filepath.FromSlash(clean)))
	if err != nil || len(matches) == 0 {
		return fmt.Sprintf("source %q does not exist in the build context (the repository root)", expanded)
	}
	if ignore != nil {
		if ignored, err := ignore.MatchesOrParentMatches(clean); err == nil && ignored {
			return fmt.Sprintf("source %q is excluded by .dockerignore", expanded)
		}
	}
	return ""
}
