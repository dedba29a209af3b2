# Rendered by `joblife nomad render` from joblife's settings, job types and flavor
# catalogue. Change those and render again rather than editing this file.

job "joblife-configure" {
  type        = "batch"
  datacenters = ["*"]

  periodic {
    crons            = ["* * * * *"]
    prohibit_overlap = true
    time_zone        = "UTC"
  }

  group "configure" {
    count = 1

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "configure" {
      driver = "docker"

      config {
        image   = "joblife/worker:latest"
        command = "joblife"
        args    = ["run", "--once", "--services", "configure"]
      }

      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/joblife" -}}
          {{- range $key, $value := . }}
          {{- if not (eq $key "amqp_url" "attempt_secret_key" "nomad_token" "worker_database_url") }}
          JOBLIFE_{{ $key | toUpper }}={{ $value.Value | toJSON }}
          {{- end }}
          {{- end }}
          {{- end }}
          EOT
        destination = "${NOMAD_SECRETS_DIR}/joblife.env"
        env         = true
        change_mode = "noop"
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
