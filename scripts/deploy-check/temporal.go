// temporal/: Kubernetes objects there, loose or in a kustomization, are checked like the
// kustomize output; everything else (Helm values) must be YAML without duplicate keys.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// checkTemporal checks every YAML file under temporal/.
func checkTemporal(repo string, decoder *Decoder, report *Report) {
	files, err := yamlFiles(filepath.Join(repo, "temporal"))
	if err == nil && len(files) == 0 {
		err = fmt.Errorf("no YAML files")
	}
	if err != nil {
		report.Check("temporal", "YAML files", []string{fileProblem(repo, err)})
		return
	}
	var all []Object
	built := map[string]bool{}
	for _, file := range files {
		dir := filepath.Dir(file)
		if isKustomization(dir) {
			// Its files are parts of what kustomize builds, not objects on their own.
			if !built[dir] {
				built[dir] = true
				objs, found := buildObjects(dir, decoder)
				found = append(found, checkObjects(objs, batchPolicy)...)
				all = append(all, objs...)
				report.Check(rel(repo, dir), fmt.Sprintf("kustomize build, %d objects", len(objs)), found)
			}
			continue
		}
		objs, summary, found := checkTemporalFile(file, decoder)
		all = append(all, objs...)
		report.Check(rel(repo, file), summary, found)
	}
	report.Check("temporal", fmt.Sprintf("%d objects together", len(all)), buildPolicy(all, false))
}

// checkTemporalFile decodes the objects of one file and checks them.
func checkTemporalFile(file string, decoder *Decoder) ([]Object, string, []string) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, "unreadable", []string{err.Error()}
	}
	if err := yamlDocumentsError(data); err != nil {
		return nil, "invalid YAML", []string{err.Error()}
	}
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, "invalid YAML", []string{err.Error()}
	}
	var objs []Object
	var found []string
	values := 0
	for _, doc := range docs {
		h, err := readHeader(doc)
		if err != nil || h.APIVersion == "" || h.Kind == "" {
			// Not an object: Helm values, which only have to be YAML (checked above).
			values++
			continue
		}
		obj, err := decoder.Decode(doc)
		if err != nil {
			found = append(found, err.Error())
			continue
		}
		objs = append(objs, obj)
	}
	found = append(found, checkObjects(objs, batchPolicy)...)
	summary := fmt.Sprintf("%d objects", len(objs))
	if values > 0 {
		summary = fmt.Sprintf("%s, %d values document(s)", summary, values)
	}
	return objs, summary, found
}

// isKustomization: dir holds a kustomization file.
func isKustomization(dir string) bool {
	for _, name := range []string{"kustomization.yaml", "kustomization.yml", "Kustomization"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}
