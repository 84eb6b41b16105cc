//! The Kubernetes job runner (placeholder until implemented).
