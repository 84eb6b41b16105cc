// Objects mode: files of Kubernetes objects made by something else (the Kubernetes job
// runner), decoded strictly and held to the restricted Pod Security Standard.
package main

import (
	"fmt"
	"os"
)

// checkObjectFiles checks each file's objects; Jobs and other batch workloads follow
// restrictedBatchPolicy, since the runner's namespaces enforce `restricted`.
func checkObjectFiles(files []string, decoder *Decoder, report *Report) {
	for _, file := range files {
		objs, found := decodeFile(file, decoder)
		found = append(found, checkObjects(objs, restrictedBatchPolicy)...)
		report.Check(file, fmt.Sprintf("%d objects", len(objs)), found)
	}
}

// decodeFile strictly decodes every document of a multi-document YAML or JSON file.
func decodeFile(file string, decoder *Decoder) ([]Object, []string) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, []string{err.Error()}
	}
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, []string{err.Error()}
	}
	if len(docs) == 0 {
		return nil, []string{"no objects"}
	}
	var objs []Object
	var found []string
	for i, doc := range docs {
		obj, err := decoder.Decode(doc)
		if err != nil {
			found = append(found, fmt.Sprintf("document %d: %v", i+1, err))
			continue
		}
		objs = append(objs, obj)
	}
	return objs, found
}
