// A stand-in with the signatures of Android's android.content.SharedPreferences
// (the part the docs use), so their blocks compile off Android.
package android.content

interface SharedPreferences {
    fun contains(key: String): Boolean
    fun getString(key: String, defValue: String?): String?
    fun getLong(key: String, defValue: Long): Long
    fun edit(): Editor

    interface Editor {
        fun putString(key: String, value: String?): Editor
        fun putLong(key: String, value: Long): Editor
        fun apply()
    }
}
