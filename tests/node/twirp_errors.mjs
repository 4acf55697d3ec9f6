// What a failed SDK call says: its Twirp code, HTTP status and message
// (null when the call succeeded), for the scripts to print.
export async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (e) {
    return { code: e.code ?? null, status: e.status ?? null, message: e.message };
  }
}
