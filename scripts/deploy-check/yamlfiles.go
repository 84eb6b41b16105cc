// YAML source files: finding them and parsing them with duplicate keys as errors, which the
// kustomize and Kubernetes decoders would otherwise resolve silently (the last key wins).
package main

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
)

// yamlFiles lists the *.yaml and *.yml files under dir, sorted.
func yamlFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		ext := filepath.Ext(path)
		if !entry.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, path)
		}
		return nil
	})
	sort.Strings(files)
	return files, err
}

// yamlDocumentsError parses every document of data and returns the first syntax or
// duplicate-key error (with its line), or nil.
func yamlDocumentsError(data []byte) error {
	decoder := yamlv3.NewDecoder(bytes.NewReader(data))
	for {
		var doc any
		err := decoder.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			// Every YAML error says "yaml: "; the file name in front says it better.
			return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
		}
	}
}

// yamlSyntaxProblems checks every YAML file under dir, naming each file relative to repo.
func yamlSyntaxProblems(repo, dir string) []string {
	files, err := yamlFiles(dir)
	if err != nil {
		return []string{fileProblem(repo, err)}
	}
	var found problems
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			found.addf("%v", err)
			continue
		}
		if err := yamlDocumentsError(data); err != nil {
			found.addf("%s: %v", rel(repo, file), err)
		}
	}
	return found
}

// rel names path relative to the repository for messages, or as is if it is outside.
func rel(repo, path string) string {
	r, err := filepath.Rel(repo, path)
	if err != nil || strings.HasPrefix(r, "..") {
		return path
	}
	return filepath.ToSlash(r)
}

// fileProblem phrases a file error for the report: a missing file by its repository path,
// since most first runs fail on one; other errors as they are.
func fileProblem(repo string, err error) string {
	var pathErr *fs.PathError
	if errors.Is(err, fs.ErrNotExist) && errors.As(err, &pathErr) {
		return rel(repo, pathErr.Path) + " does not exist"
	}
	return err.Error()
}
