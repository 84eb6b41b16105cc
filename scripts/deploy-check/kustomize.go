// Kustomize: building k8s/base and every overlay in-process, decoding each resulting object
// strictly and applying the object and build policies to it.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kustomizations lists the directories to build: k8s/base, then each k8s/overlays/* sorted.
func kustomizations(repo string) ([]string, error) {
	dirs := []string{filepath.Join(repo, "k8s", "base")}
	entries, err := os.ReadDir(filepath.Join(repo, "k8s", "overlays"))
	if err != nil {
		return nil, err
	}
	var overlays []string
	for _, e := range entries {
		if e.IsDir() {
			overlays = append(overlays, filepath.Join(repo, "k8s", "overlays", e.Name()))
		}
	}
	if len(overlays) == 0 {
		return nil, fmt.Errorf("k8s/overlays has no overlay")
	}
	sort.Strings(overlays)
	return append(dirs, overlays...), nil
}

// checkKustomize builds and checks every kustomization of the repository.
func checkKustomize(repo string, decoder *Decoder, report *Report) {
	k8s := filepath.Join(repo, "k8s")
	report.Check("k8s/**/*.yaml", "YAML without duplicate keys", yamlSyntaxProblems(repo, k8s))
	dirs, err := kustomizations(repo)
	if err != nil {
		report.Check("k8s", "kustomizations", []string{fileProblem(repo, err)})
		return
	}
	for _, dir := range dirs {
		name := rel(repo, dir)
		objs, found := buildObjects(dir, decoder)
		if objs != nil {
			found = append(found, checkObjects(objs, batchPolicy)...)
			found = append(found, buildPolicy(objs, isProd(dir))...)
		}
		report.Check(name, fmt.Sprintf("kustomize build, %d objects", len(objs)), found)
	}
}

// buildObjects runs kustomize on dir and decodes its output; nil objects if the build failed.
func buildObjects(dir string, decoder *Decoder) ([]Object, []string) {
	options := krusty.MakeDefaultOptions()
	resources, err := krusty.MakeKustomizer(options).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, []string{fmt.Sprintf("kustomize build: %v", err)}
	}
	objs := []Object{}
	var found []string
	for _, res := range resources.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			found = append(found, fmt.Sprintf("%s: %v", res.CurId(), err))
			continue
		}
		obj, err := decoder.Decode(doc)
		if err != nil {
			found = append(found, err.Error())
			continue
		}
		objs = append(objs, obj)
	}
	return objs, found
}

// checkObjects applies the per-object policy: services' or batch's by kind, plus images
// set outside pod templates.
func checkObjects(objs []Object, batch Policy) []string {
	var found []string
	for _, obj := range objs {
		found = append(found, policyFor(obj, batch).Apply(obj)...)
		found = append(found, objectImages(obj)...)
	}
	return found
}

// isProd says whether dir is the prod overlay, where the prod-only rules apply.
func isProd(dir string) bool {
	return filepath.Base(dir) == "prod" && filepath.Base(filepath.Dir(dir)) == "overlays"
}
