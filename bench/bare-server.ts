// The HTTP ceiling's server: bare node:http, one process (one core for JavaScript, like the service),
// answering every request with a fixed small JSON body of the size of a checkout's answer.
// node bench/bare-server.ts <port>
import { createServer } from 'node:http';

const body = JSON.stringify({
  code: 'hpU8nzVm3BUGylvgqHX7vw',
  user_id: 'lt1a2b3c4d-c1234',
  item_id: 123_456,
  sale_id: 42,
  expires_at: '2026-01-01T00:10:00.000Z',
});
const headers = { 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(body)) };

const server = createServer((request, response) => {
  request.resume();
  request.on('end', () => {
    response.writeHead(200, headers);
    response.end(body);
  });
});

const port = Number(process.argv[2] ?? 0);
server.listen(port, '127.0.0.1', () => console.log(`bare server listening on 127.0.0.1:${port}`));

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
