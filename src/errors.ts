// Every expected failure has a stable code; this table alone maps codes to HTTP statuses.

export const errorStatus = {
  bad_request: 400,
  not_found: 404,
  request_timeout: 408,
  payload_too_large: 413,
  unsupported_media_type: 415,
  headers_too_large: 431,
  item_unknown: 404,
  item_sold: 409,
  code_unknown: 404,
  code_expired: 410,
  // 429 keeps the reference service's clients working; the `error` field tells it from rate limiting.
  limit_reached: 429,
  rate_limited: 429,
  // The request waited its whole queue budget (or found the queue full) and was never sent.
  overloaded: 503,
  database_unavailable: 503,
  internal: 500,
} as const;

export type ErrorCode = keyof typeof errorStatus;

// An expected refusal (a sold item, a spent limit) is an answer, not a fault: it is never logged.
export class AppError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

export const messages = {
  itemUnknown: (itemId: number) => `Item ${itemId} does not exist`,
  itemSold: (itemId: number) => `Item ${itemId} is already sold`,
  codeUnknown: () => 'This checkout code is not valid',
  codeExpired: () => 'This checkout code has expired; check out the item again',
  limitReached: (limit: number) => `User has reached the maximum of ${limit} items per sale`,
  overloaded: () => 'The service is overloaded; try again shortly (checkout and purchase are safe to retry)',
  databaseUnavailable: () => 'The database is unavailable; try again shortly (checkout and purchase are safe to retry)',
};
