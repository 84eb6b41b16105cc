// Image pinning: the one rule every image reference (Kubernetes, compose, Dockerfile FROM)
// must follow, so a deploy always runs what was tested.
package main

import (
	"fmt"

	"github.com/distribution/reference"
)

// imageProblem says why image is not pinned, or "" if it is: pinned means a digest, or an
// explicit tag other than `latest` (a moving tag would let a restart change the code).
func imageProblem(image string) string {
	if image == "" {
		return "has no image"
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return fmt.Sprintf("image %q is not a valid reference: %v", image, err)
	}
	if _, ok := named.(reference.Digested); ok {
		return ""
	}
	tagged, ok := named.(reference.Tagged)
	if !ok {
		return fmt.Sprintf("image %q is not pinned: no tag or digest", image)
	}
	if tagged.Tag() == "latest" {
		return fmt.Sprintf("image %q is not pinned: :latest moves", image)
	}
	return ""
}
