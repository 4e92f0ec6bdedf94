/*
 * settings.js - Node-RED settings for bench/compare.sh (benchmark only).
 *
 * compare.sh starts one throw-away Node-RED per run with a fresh user dir and
 * passes everything that changes between runs through the environment:
 *   R2M_NR_USERDIR  the temp user dir (flow.json is copied into it)
 *   R2M_NR_PORT     loopback port of the HTTP server that serves "http in"
 *   R2M_MQTT_PORT   port of the bench's mosquitto (used in flow.json as ${R2M_MQTT_PORT})
 * The editor and admin API are off (no second port, no deploys), credentials
 * are not encrypted (the flow has none) and only warnings are logged, so that
 * the runtime does nothing during a run but run the flow.
 */
const port = Number(process.env.R2M_NR_PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535)
    throw new Error("R2M_NR_PORT must be a TCP port");
if (!process.env.R2M_NR_USERDIR)
    throw new Error("R2M_NR_USERDIR must be set");

module.exports = {
    userDir: process.env.R2M_NR_USERDIR,
    flowFile: "flow.json",
    credentialSecret: false,
    uiHost: "127.0.0.1",
    uiPort: port,
    httpAdminRoot: false,
    httpNodeRoot: "/",
    disableEditor: true,
    logging: {
        console: { level: "warn", metrics: false, audit: false },
    },
    functionExternalModules: false,
    externalModules: { autoInstall: false },
    diagnostics: { enabled: false },
    runtimeState: { enabled: false },
};
