"""HTTP routes, one mixin per modality, composed into `deployments.ingress.Ingress`."""
