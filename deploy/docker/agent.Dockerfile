# The Kernex device agent in a container: for devices that run containers, and for test
# fleets. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t kernex-agent .
# Run with the device kit mounted read-only and a volume for the state and the applications:
#   docker run -v ./kit:/etc/kernex:ro -v kernex-agent:/var/lib/kernex-agent \
#     -v kernex-apps:/opt/kernex kernex-agent
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10002 --create-home --home-dir /home/kernex-agent kernex-agent \
    && install -d -o kernex-agent -g kernex-agent -m 0700 /var/lib/kernex-agent \
    && install -d -o kernex-agent -g kernex-agent -m 0755 /opt/kernex/app

WORKDIR /app
COPY constraints.txt ./
COPY protocol/ protocol/
COPY device-agent/ device-agent/
# Only the agent's own small dependency set: no backend packages on a device.
RUN pip install -c constraints.txt ./protocol ./device-agent

USER kernex-agent
VOLUME ["/var/lib/kernex-agent", "/opt/kernex"]
ENTRYPOINT ["kernex-agent"]
CMD ["--config", "/etc/kernex/agent.toml"]
