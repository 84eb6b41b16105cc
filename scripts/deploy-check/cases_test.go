// One failing case per check: each breaks the good fixture in one way and asserts the
// problem it must produce, so a check that silently passes fails its case.
package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// edit changes a copy of the good fixture.
type edit func(t *testing.T, repo string)

// replace swaps the one occurrence of old in file; a fixture that no longer contains old
// fails the test rather than leaving the case checking nothing.
func replace(file, old, new string) edit {
	return func(t *testing.T, repo string) {
		t.Helper()
		path := filepath.Join(repo, file)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(data), old); n != 1 {
			t.Fatalf("%s contains %q %d times, want once", file, old, n)
		}
		if err := os.WriteFile(path, []byte(strings.Replace(string(data), old, new, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func remove(file string) edit {
	return func(t *testing.T, repo string) {
		t.Helper()
		if err := os.Remove(filepath.Join(repo, file)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEachCheckFails(t *testing.T) {
	const (
		deployment = "k8s/base/deployment.yaml"
		compose    = "docker-compose.yml"
		env        = ".env.example"
		dockerfile = "Dockerfile"
		agent      = "claude-agent/Dockerfile"
	)
	cases := []struct {
		name string
		edit edit
		want string
	}{
		// Strict decoding of the kustomize output.
		{"unknown field in a Deployment", replace(deployment, "  replicas: 1\n", "  replicas: 1\n  replicaz: 2\n"),
			`k8s/base: Deployment mainloop/mainloop-api: strict decoding error: unknown field "spec.replicaz"`},
		{"unknown field in a CNPG Cluster", replace("k8s/base/postgres.yaml", "  instances: 2\n", "  instances: 2\n  instancez: 3\n"),
			`k8s/base: Cluster mainloop/mainloop-db: strict decoding error: unknown field "spec.instancez"`},
		{"unknown field in a Gateway API HTTPRoute", replace("k8s/base/httproute.yaml", "  hostnames:", "  hostname: x\n  hostnames:"),
			`HTTPRoute mainloop/mainloop: strict decoding error: unknown field "spec.hostname"`},
		{"duplicate field", replace(deployment, "  replicas: 1\n", "  replicas: 1\n  replicas: 3\n"),
			`k8s/**/*.yaml: k8s/base/deployment.yaml: unmarshal errors: line 7: mapping key "replicas" already defined at line 6`},
		{"unknown kind", replace("k8s/base/service.yaml", "kind: Service", "kind: Servic"),
			`k8s/base: Servic mainloop/mainloop-api: unknown apiVersion/kind v1 Servic`},
		{"beta apiVersion", replace("k8s/base/pdb.yaml", "policy/v1", "policy/v1beta1"),
			`unknown apiVersion/kind policy/v1beta1 PodDisruptionBudget`},
		{"kustomize build error", replace("k8s/base/kustomization.yaml", "  - pdb.yaml\n", "  - pdb.yaml\n  - missing.yaml\n"),
			`k8s/base: kustomize build:`},
		// Policy on the built objects.
		{"missing probe", replace(deployment, "          readinessProbe: {httpGet: {path: /readyz, port: http}}\n", ""),
			`k8s/base: Deployment mainloop/mainloop-api: container "api" has no readinessProbe`},
		{"missing resources", replace(deployment, "            limits: {cpu: \"1\", memory: 512Mi}\n", ""),
			`Deployment mainloop/mainloop-api: container "api" has no memory limit`},
		{"init container without resources", replace(deployment, "            requests: {cpu: 100m, memory: 128Mi}\n", ""),
			`container "migrate" has no cpu request`},
		{"root pod", replace(deployment, "        runAsNonRoot: true\n", ""),
			`Deployment mainloop/mainloop-api: pod securityContext does not set runAsNonRoot: true`},
		{"privilege escalation", replace(deployment, "            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            capabilities: {drop: [ALL]}\n          volumeMounts:", "            allowPrivilegeEscalation: true\n            readOnlyRootFilesystem: true\n            capabilities: {drop: [ALL]}\n          volumeMounts:"),
			`Deployment mainloop/mainloop-api: container "api": allowPrivilegeEscalation is not false`},
		{"writable root", replace(deployment, "            readOnlyRootFilesystem: true\n            capabilities: {drop: [ALL]}\n          volumeMounts:", "            capabilities: {drop: [ALL]}\n          volumeMounts:"),
			`container "api": readOnlyRootFilesystem is not true`},
		{"unpinned image", replace(deployment, "          image: ghcr.io/mainloop/mainloop:0.1.0\n          ports:", "          image: ghcr.io/mainloop/api\n          ports:"),
			`k8s/base: Deployment mainloop/mainloop-api: container "api": image "ghcr.io/mainloop/api" is not pinned: no tag or digest`},
		{":latest in a CNPG Cluster", replace("k8s/base/postgres.yaml", "postgresql:17.5", "postgresql:latest"),
			`Cluster mainloop/mainloop-db: image "ghcr.io/cloudnative-pg/postgresql:latest" is not pinned: :latest moves`},
		{"no PodDisruptionBudget in prod", replace("k8s/base/pdb.yaml", "app.kubernetes.io/name: mainloop-api", "app.kubernetes.io/name: other"),
			`k8s/overlays/prod: Deployment mainloop/mainloop-api (2 replicas) has no PodDisruptionBudget whose selector matches its pod labels`},
		{"literal Secret in prod", replace("k8s/overlays/prod/kustomization.yaml", "images:", "secretGenerator:\n  - name: tokens\n    literals: [token=x]\nimages:"),
			`k8s/overlays/prod: Secret tokens-fd9k8cktfk has literal data/stringData in the prod overlay`},
		{"namespace without default-deny", replace("k8s/base/networkpolicy.yaml", "  podSelector: {}\n", "  podSelector: {matchLabels: {a: b}}\n"),
			`k8s/base: Namespace mainloop has no default-deny NetworkPolicy`},
		{"no overlays", remove("k8s/overlays/dev/kustomization.yaml"),
			`k8s/overlays/dev: kustomize build:`},
		// temporal/.
		{"unknown field in a temporal Job", replace("temporal/schema-job.yaml", "  backoffLimit: 2\n", "  backofflimit: 2\n"),
			`temporal/schema-job.yaml: Job temporal/temporal-schema: strict decoding error: unknown field "spec.backofflimit"`},
		{"temporal Job unpinned", replace("temporal/schema-job.yaml", "admin-tools:1.28.1", "admin-tools"),
			`temporal/schema-job.yaml: Job temporal/temporal-schema: container "schema": image "temporalio/admin-tools" is not pinned`},
		{"temporal Job without drop ALL", replace("temporal/schema-job.yaml", "            capabilities: {drop: [ALL]}\n", ""),
			`temporal/schema-job.yaml: Job temporal/temporal-schema: container "schema": capabilities do not drop ALL`},
		{"unknown field in a kustomized temporal Job", replace("temporal/setup/job.yaml", "  backoffLimit: 2\n", "  backofflimit: 2\n"),
			`temporal/setup: Job temporal/temporal-setup: strict decoding error: unknown field "spec.backofflimit"`},
		{"compose mounts a missing file", remove("temporal/setup/setup.sh"),
			`docker-compose.yml: service "mainloop" mounts temporal/setup/setup.sh, which does not exist`},
		{"duplicate key in Helm values", replace("temporal/values.yaml", "  enabled: true\n", "  enabled: true\n  enabled: false\n"),
			`temporal/values.yaml: unmarshal errors: line 10: mapping key "enabled" already defined at line 9`},
		// docker-compose.yml and .env.example.
		{"compose :latest", replace(compose, "postgres:17.5", "postgres:latest"),
			`docker-compose.yml: service "postgres": image "postgres:latest" is not pinned: :latest moves`},
		{"compose build without image", replace(compose, "    build: .\n    image: ghcr.io/mainloop/mainloop:${MAINLOOP_VERSION:-0.1.0}\n", "    build: .\n"),
			`docker-compose.yml: service "mainloop" has no image`},
		{"compose var undocumented", replace(env, "# Port on the host for the web app.\n", ""),
			`.env.example: MAINLOOP_PORT (line 10) is not documented`},
		{"compose var undefined", replace(compose, "${POSTGRES_PASSWORD:?", "${POSTGRES_PASSWD:?"),
			`docker-compose.yml: uses ${POSTGRES_PASSWD}, which .env.example does not define`},
		{"compose service without healthcheck", replace(compose, "    healthcheck: {test: [\"CMD\", \"tctl\", \"cluster\", \"health\"], interval: 5s}\n", ""),
			`docker-compose.yml: service "temporal" has no healthcheck`},
		{"one-shot that restarts needs a healthcheck", replace(compose, "    restart: \"no\"\n", "    restart: always\n"),
			`docker-compose.yml: service "migrate" has no healthcheck`},
		{"depends_on without condition", replace(compose, "    depends_on: {postgres: {condition: service_healthy}}\n", "    depends_on: [postgres]\n"),
			`docker-compose.yml: service "temporal": depends_on "postgres" must set condition service_healthy or service_completed_successfully (it is service_started)`},
		{"compose schema error", replace(compose, "    command: [\"migrate\"]\n", "    commands: [\"migrate\"]\n"),
			`docker-compose.yml: compose-spec: validating`},
		{"compose duplicate key", replace(compose, "    restart: \"no\"\n", "    restart: \"no\"\n    restart: always\n"),
			`docker-compose.yml: unmarshal errors: line 16: mapping key "restart" already defined at line 15`},
		{"no docker-compose.yml", remove(compose),
			`docker-compose.yml: docker-compose.yml does not exist`},
		// Dockerfiles and .dockerignore.
		{"Dockerfile running as root", replace(dockerfile, "USER 10001:10001\n", ""),
			`Dockerfile: the final stage sets no USER, so it runs as root`},
		{"Dockerfile USER by name", replace(agent, "USER 10001\n", "USER agent\n"),
			`claude-agent/Dockerfile: the final stage's USER "agent" is not a numeric uid`},
		{"Dockerfile USER 0", replace(dockerfile, "USER 10001:10001\n", "USER 0:0\n"),
			`Dockerfile: the final stage's USER "0:0" is root`},
		{"COPY of a missing path", replace(dockerfile, "COPY src ./src\n", "COPY srcs ./src\n"),
			`Dockerfile: COPY srcs ./src: source "srcs" does not exist in the build context`},
		{"COPY of a missing path via ARG", replace(agent, "ARG CRATE=claude-agent\n", "ARG CRATE=agent\n"),
			`claude-agent/Dockerfile: COPY ${CRATE} ./${CRATE}: source "agent" does not exist`},
		{"COPY of an ignored path", replace(".dockerignore", ".git\n", ".git\nsrc\n"),
			`Dockerfile: COPY src ./src: source "src" is excluded by .dockerignore`},
		{"FROM :latest via ARG", replace(agent, "ARG RUNTIME_IMAGE=node:22-bookworm-slim\n", "ARG RUNTIME_IMAGE=node:latest\n"),
			`claude-agent/Dockerfile: stage 3 (FROM ${RUNTIME_IMAGE}): image "node:latest" is not pinned: :latest moves`},
		{"FROM unpinned", replace(dockerfile, "ARG RUST_IMAGE=rust:1.92-bookworm\n", "ARG RUST_IMAGE=rust\n"),
			`Dockerfile: stage 1 (FROM ${RUST_IMAGE}): image "rust" is not pinned: no tag or digest`},
		{".dockerignore without node_modules", replace(".dockerignore", "**/node_modules\n", "node_modules\n"),
			`.dockerignore: does not exclude "frontend/node_modules" (add **/node_modules)`},
		{"no .dockerignore", remove(".dockerignore"),
			`.dockerignore: .dockerignore does not exist`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repo := copyTree(t, filepath.Join("testdata", "repo"))
			c.edit(t, repo)
			report := checkTree(t, repo)
			for _, p := range report.Problems {
				if strings.Contains(p, c.want) {
					return
				}
			}
			t.Errorf("no problem contains %q; problems:\n  %s", c.want, strings.Join(report.Problems, "\n  "))
		})
	}
}
