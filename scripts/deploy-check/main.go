// Command deploy-check proves mainloop's deployment files correct without a container
// engine or a cluster. Repo mode (the default) checks k8s/, temporal/, docker-compose.yml
// and the Dockerfiles of a repository; objects mode (--objects) checks files of Kubernetes
// objects that code generates. It exits 1 on any problem. See README.md.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: the exit code for args, output to stdout and stderr.
func run(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("deploy-check", flag.ContinueOnError)
	flags.SetOutput(stderr)
	repo := flags.String("repo", ".", "the repository to check (repo mode)")
	objects := flags.Bool("objects", false, "check the files named after the flags, each of multi-document YAML or JSON Kubernetes objects, instead of a repository")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *objects == (flags.NArg() == 0) {
		fmt.Fprintln(stderr, "deploy-check: --objects takes one or more files, and files need --objects")
		return 2
	}
	decoder, err := NewDecoder()
	if err != nil {
		fmt.Fprintf(stderr, "deploy-check: %v\n", err)
		return 2
	}
	var report Report
	if *objects {
		checkObjectFiles(flags.Args(), decoder, &report)
	} else {
		checkRepo(*repo, decoder, &report)
	}
	if err := report.Print(stdout); err != nil {
		fmt.Fprintf(stderr, "deploy-check: %v\n", err)
		return 2
	}
	if report.Failed() {
		return 1
	}
	return 0
}

// checkRepo runs every repo-mode check; a missing file is a problem, not a skip.
func checkRepo(repo string, decoder *Decoder, report *Report) {
	checkKustomize(repo, decoder, report)
	checkTemporal(repo, decoder, report)
	checkCompose(repo, report)
	checkDockerfiles(repo, report)
}
