// docker-compose.yml: loaded (and schema-validated) by compose-go with the variables of
// .env.example, then held to our rules: pinned images, documented variables, health checks
// and ordered start-up.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/sirupsen/logrus"
	yamlv3 "go.yaml.in/yaml/v3"
)

const (
	composeFile = "docker-compose.yml"
	envExample  = ".env.example"
)

// checkCompose checks .env.example, then docker-compose.yml against it.
func checkCompose(repo string, report *Report) {
	envData, err := os.ReadFile(filepath.Join(repo, envExample))
	if err != nil {
		report.Check(envExample, "variables", []string{fileProblem(repo, err)})
		report.Check(composeFile, "services", []string{fmt.Sprintf("not checked: %s is unreadable", envExample)})
		return
	}
	vars, found := parseEnvExample(string(envData))
	found = append(found, undocumented(vars)...)
	// Values may refer to each other, never to the environment of whoever runs the check.
	env, err := dotenv.UnmarshalBytesWithLookup(envData, func(string) (string, bool) { return "", false })
	if err != nil {
		found = append(found, err.Error())
	}
	report.Check(envExample, fmt.Sprintf("%d variables", len(vars)), found)

	project, composeFound, warnings := loadComposeLogged(repo, env)
	for _, w := range warnings {
		report.Warn(composeFile, w)
	}
	count := 0
	if project != nil {
		composeFound = append(composeFound, composeServices(project)...)
		count = len(project.Services)
	}
	report.Check(composeFile, fmt.Sprintf("%d services", count), composeFound)
}

// loadComposeLogged is loadCompose with compose-go's warnings (obsolete keys, unset
// variables), which it logs through logrus, captured for the report instead of stderr.
func loadComposeLogged(repo string, env map[string]string) (*types.Project, []string, []string) {
	logger := logrus.StandardLogger()
	out, formatter := logger.Out, logger.Formatter
	var logged bytes.Buffer
	logger.SetOutput(&logged)
	logger.SetFormatter(messageOnly{})
	defer func() {
		logger.SetOutput(out)
		logger.SetFormatter(formatter)
	}()
	project, found := loadCompose(repo, env)
	var warnings []string
	for _, line := range strings.Split(logged.String(), "\n") {
		if line != "" {
			warnings = append(warnings, line)
		}
	}
	return project, found, warnings
}

// messageOnly formats a log entry as its message alone, one per line.
type messageOnly struct{}

func (messageOnly) Format(entry *logrus.Entry) ([]byte, error) {
	return []byte(entry.Message + "\n"), nil
}

// loadCompose checks the variables the file uses and loads it; a nil project if it does not
// load.
func loadCompose(repo string, env map[string]string) (*types.Project, []string) {
	path := filepath.Join(repo, composeFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []string{fileProblem(repo, err)}
	}
	// Duplicate keys first: the loader would keep one silently.
	if err := yamlDocumentsError(data); err != nil {
		return nil, []string{err.Error()}
	}
	var raw map[string]any
	if err := yamlv3.Unmarshal(data, &raw); err != nil {
		return nil, []string{err.Error()}
	}
	found := undefinedVariables(raw, env)
	details := types.ConfigDetails{
		WorkingDir:  repo,
		ConfigFiles: []types.ConfigFile{{Filename: path, Content: data}},
		// Only .env.example, never the caller's environment: the result must not depend on
		// who runs the check.
		Environment: filledIn(env),
	}
	project, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		// A fallback: a top-level `name:` in the file wins over a name that is not explicit.
		o.SetProjectName("mainloop", false)
	})
	if err != nil {
		return nil, append(found, fmt.Sprintf("compose-spec: %v", err))
	}
	return project, found
}

// filledIn gives the secrets .env.example leaves empty for the user a stand-in value, so that
// `${VAR:?message}` (the compose file's way of demanding them) interpolates and the rest of
// the file is checked.
func filledIn(env map[string]string) map[string]string {
	out := make(map[string]string, len(env))
	for name, value := range env {
		if value == "" {
			value = "filled-in-by-the-user"
		}
		out[name] = value
	}
	return out
}

// undefinedVariables: every ${VAR} or $VAR the file uses is assigned in .env.example (which
// also requires it documented), defaults or not, so the example lists every knob.
func undefinedVariables(raw map[string]any, env map[string]string) []string {
	var names []string
	for name := range template.ExtractVariables(raw, template.DefaultPattern) {
		if _, ok := env[name]; !ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var found []string
	for _, name := range names {
		found = append(found, fmt.Sprintf("uses ${%s}, which %s does not define", name, envExample))
	}
	return found
}

// composeServices applies the service rules to every service, in name order.
func composeServices(project *types.Project) []string {
	oneShot := oneShotServices(project)
	var names []string
	for name := range project.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	var found problems
	for _, name := range names {
		svc := project.Services[name]
		if svc.Image == "" {
			found.addf("service %q has no image: name a pinned image (even with build:)", name)
		} else if p := imageProblem(svc.Image); p != "" {
			found.addf("service %q: %s", name, p)
		}
		if !oneShot[name] && !hasHealthcheck(svc) {
			found.addf("service %q has no healthcheck (only a one-shot service, restart \"no\" and depended on with service_completed_successfully, may go without)", name)
		}
		for _, volume := range svc.Volumes {
			// A missing bind source would be created by Docker as an empty directory, and the
			// script or file meant to be there silently is not.
			if volume.Type == types.VolumeTypeBind {
				if _, err := os.Stat(volume.Source); err != nil {
					found.addf("service %q mounts %s, which does not exist", name, rel(project.WorkingDir, volume.Source))
				}
			}
		}
		for _, dep := range sortedKeys(svc.DependsOn) {
			cond := svc.DependsOn[dep].Condition
			if cond != types.ServiceConditionHealthy && cond != types.ServiceConditionCompletedSuccessfully {
				found.addf("service %q: depends_on %q must set condition service_healthy or service_completed_successfully (it is %s)", name, dep, cond)
			}
		}
	}
	return found
}

// oneShotServices are those that run to completion: not restarted, and waited for with
// service_completed_successfully by another service.
func oneShotServices(project *types.Project) map[string]bool {
	oneShot := map[string]bool{}
	for _, svc := range project.Services {
		for dep, d := range svc.DependsOn {
			target, ok := project.Services[dep]
			restart := strings.Trim(target.Restart, `"'`)
			if ok && d.Condition == types.ServiceConditionCompletedSuccessfully && (restart == "" || restart == "no") {
				oneShot[dep] = true
			}
		}
	}
	return oneShot
}

func hasHealthcheck(svc types.ServiceConfig) bool {
	h := svc.HealthCheck
	return h != nil && !h.Disable && len(h.Test) > 0 && h.Test[0] != "NONE"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
