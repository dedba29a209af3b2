# Rendered by `joblife nomad render` from joblife's settings, job types and flavor
# catalogue. Change those and render again rather than editing this file.

job "joblife-services" {
  type        = "service"
  datacenters = ["*"]

  group "run" {
    count = 2

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "run" {
      driver = "docker"

      config {
        image   = "joblife/worker:latest"
        command = "joblife"
        args    = ["run"]
      }

      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/joblife" -}}
          {{- range $key, $value := . }}
          {{- if not (eq $key "worker_database_url") }}
          JOBLIFE_{{ $key | toUpper }}={{ $value.Value | toJSON }}
          {{- end }}
          {{- end }}
          {{- end }}
          EOT
        destination = "${NOMAD_SECRETS_DIR}/joblife.env"
        env         = true
        change_mode = "restart"
      }

      env {
        JOBLIFE_PUBLICATION_SPOOL = "none"
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
