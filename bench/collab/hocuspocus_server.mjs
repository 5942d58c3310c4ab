// The Hocuspocus peer: @hocuspocus/server with SQLite persistence (@hocuspocus/extension-sqlite).
//
// Usage: node bench/collab/hocuspocus_server.mjs PORT DB_PATH
//
// Listens on 127.0.0.1:PORT (0: any free port) and prints "listening PORT".
// Everything else is Hocuspocus's defaults, as a deployment gets them:
// - an update is applied in memory and answered with a SyncStatus message
//   (what the provider counts down in `unsyncedChanges`), then broadcast to
//   every connection of the document, coalesced per event-loop turn
//   (`flushDelay: 0`);
// - the document is stored (onStoreDocument: the whole Y.Doc state, one
//   SQLite upsert) `debounce` = 2 s after the last change, or at the latest
//   `maxDebounce` = 10 s after the first unsaved one; also at once when the
//   last client leaves (`unloadImmediately`) and on SIGTERM (`destroy`).
import { SQLite } from "@hocuspocus/extension-sqlite";
import { Server } from "@hocuspocus/server";

const [portArg, database] = process.argv.slice(2);
if (portArg === undefined || database === undefined) {
	console.error("usage: node hocuspocus_server.mjs PORT DB_PATH");
	process.exit(2);
}

const server = new Server({
	address: "127.0.0.1",
	port: Number(portArg),
	quiet: true,
	// SIGTERM/SIGINT: destroy() closes the connections and flushes pending stores, then exits.
	stopOnSignals: true,
	extensions: [new SQLite({ database })],
});

await server.listen();
console.log(`listening ${server.address.port}`);
