// Tests of the checker on fixture trees under testdata/: the good tree passes, and each
// mutation of it (cases_test.go) fails with its own message.
package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyTree copies the fixture at src into a fresh temporary directory, so a test can break
// it without touching testdata.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		relPath, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, relPath)
		if entry.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		t.Fatalf("copying %s: %v", src, err)
	}
	return dst
}

func checkTree(t *testing.T, repo string) *Report {
	t.Helper()
	decoder, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	var report Report
	checkRepo(repo, decoder, &report)
	return &report
}

func TestGoodRepoPasses(t *testing.T) {
	report := checkTree(t, copyTree(t, filepath.Join("testdata", "repo")))
	if report.Failed() {
		t.Fatalf("the good fixture has problems:\n%s", strings.Join(report.Problems, "\n"))
	}
	var out bytes.Buffer
	if err := report.Print(&out); err != nil {
		t.Fatal(err)
	}
	// Each thing is reported as checked, with what it contained: a check that found
	// nothing to look at would show here.
	for _, line := range []string{
		"ok   k8s/base: kustomize build, 13 objects",
		"ok   k8s/overlays/dev: kustomize build, 14 objects",
		"ok   k8s/overlays/prod: kustomize build, 15 objects",
		"ok   temporal/schema-job.yaml: 1 objects",
		"ok   temporal/values.yaml: 0 objects, 1 values document(s)",
		"ok   .env.example: 4 variables",
		"ok   docker-compose.yml: 4 services",
		"ok   Dockerfile: 2 stages",
		"ok   claude-agent/Dockerfile: 3 stages",
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("output lacks %q:\n%s", line, out.String())
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--repo", filepath.Join("testdata", "repo")}, &out, &errOut); code != 0 {
		t.Fatalf("good repo: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	broken := copyTree(t, filepath.Join("testdata", "repo"))
	if err := os.Remove(filepath.Join(broken, "docker-compose.yml")); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run([]string{"--repo", broken}, &out, &errOut); code != 1 {
		t.Fatalf("repo without docker-compose.yml: exit %d, want 1\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "FAIL docker-compose.yml") || !strings.Contains(out.String(), "1 problem(s):") {
		t.Errorf("the missing file is not reported as the one problem:\n%s", out.String())
	}
	if code := run([]string{"--objects"}, &out, &errOut); code != 2 {
		t.Errorf("--objects without files: exit %d, want 2", code)
	}
}

func TestObjectsMode(t *testing.T) {
	cases := []struct {
		file string
		code int
		want []string
	}{
		{"job.yaml", 0, []string{"ok   testdata/objects/job.yaml: 4 objects"}},
		{"job.json", 0, []string{"ok   testdata/objects/job.json: 1 objects"}},
		{"job-bogus-field.yaml", 1, []string{`strict decoding error: unknown field "spec.template.spec.containers[0].bogus"`}},
		{"job-duplicate-field.json", 1, []string{`strict decoding error: duplicate field "spec.backoffLimit"`}},
		{"job-duplicate-field.yaml", 1, []string{`key "backoffLimit" already set in map`}},
		{"job-no-seccomp.yaml", 1, []string{`Job mainloop-task-1/task-1-plan-1: container "agent": seccompProfile is not RuntimeDefault`}},
		{"job-root.yaml", 1, []string{
			`Job mainloop-task-1/task-1-plan-1: pod securityContext does not set runAsNonRoot: true`,
			`container "agent": allowPrivilegeEscalation is not false`,
			`container "agent": capabilities do not drop ALL`,
		}},
		{"unknown-kind.yaml", 1, []string{"unknown apiVersion/kind batch/v1 Jbo"}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run([]string{"--objects", filepath.Join("testdata", "objects", c.file)}, &out, &errOut)
			if code != c.code {
				t.Errorf("exit %d, want %d\n%s%s", code, c.code, out.String(), errOut.String())
			}
			for _, want := range c.want {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestComposeWarningsAreReported(t *testing.T) {
	repo := copyTree(t, filepath.Join("testdata", "repo"))
	replace("docker-compose.yml", "${MAINLOOP_PORT}", "${MAINLOOP_PRT}")(t, repo)
	report := checkTree(t, repo)
	want := `docker-compose.yml: The "MAINLOOP_PRT" variable is not set. Defaulting to a blank string.`
	for _, w := range report.Warnings {
		if w == want {
			return
		}
	}
	t.Errorf("no warning %q; warnings: %q", want, report.Warnings)
}
