package io.rejoin;

import java.io.IOException;

import okhttp3.RequestBody;
import okhttp3.Response;
import okhttp3.ResponseBody;

/**
 * The calls whose Kotlin spelling differs between OkHttp 3 ({@code code()})
 * and OkHttp 4 ({@code code}), made from Java, where both spell them the
 * same: so the library's sources build unchanged against either.
 */
final class OkHttpCompat {
    private OkHttpCompat() {}

    static int code(Response response) {
        return response.code();
    }

    static String bodyText(Response response) throws IOException {
        ResponseBody body = response.body();
        return body == null ? "" : body.string();
    }

    static RequestBody emptyBody() {
        return RequestBody.create(null, new byte[0]);
    }
}
